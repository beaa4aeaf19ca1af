"""scratchlm.safetensors: the layout it writes, what it reads back, and every lie of a header refused before
anything big is allocated (tracemalloc), with Hugging Face's own library as a second reader and writer (marker hf).
"""

import json
import tracemalloc

import numpy as np
import pytest

from scratchlm import safetensors
from scratchlm.errors import CheckpointError

SMALL = 1 << 20  # bytes: what refusing a hostile file may allocate at its peak (the lies claim up to 8 TB)


def raw_file(path, header, data=b"", length=None):
    """A safetensors file of ``header`` (a dict, JSON-encoded) and ``data``, its length field ``length`` (default
    the header's true length)."""
    text = json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + text + data)
    return path


def test_the_layout_is_sorted_aligned_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "b": rng.standard_normal((3, 4)),
        "a": rng.standard_normal(5).astype(np.float32),
        "c/int": np.arange(6, dtype=np.int64).reshape(2, 3),
        "half": rng.standard_normal(4).astype(np.float16),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 7), np.float32),
        "scalar": np.float64(2.5),
        "strided": rng.standard_normal((4, 6))[:, ::2],  # not contiguous: written in C order
    }
    path = tmp_path / "t.safetensors"
    safetensors.save(path, arrays, {"format": "pt"})
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    assert (8 + n) % 8 == 0 and blob[8 + n - 1 : 8 + n] in (b" ", b"}")
    header = json.loads(blob[8 : 8 + n])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert list(header) == sorted(arrays)
    assert header["a"] == {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]}
    assert [spec["dtype"] for spec in header.values()] == ["F32", "F64", "I64", "F32", "F16", "BOOL", "F64", "F64"]
    ends = [spec["data_offsets"] for spec in header.values()]
    assert all(end == begin for (_, end), (begin, _) in zip(ends, ends[1:], strict=False))  # no holes
    assert ends[0][0] == 0 and ends[-1][1] == len(blob) - 8 - n
    back = safetensors.load(path)
    assert list(back) == sorted(arrays)
    for name, want in arrays.items():
        want = np.asarray(want)
        assert back[name].shape == want.shape, name
        expected = np.float32 if want.dtype == np.float16 else want.dtype
        assert back[name].dtype == expected, name
        np.testing.assert_array_equal(back[name], want.astype(expected), err_msg=name)
    assert safetensors.read_header(path).metadata == {"format": "pt"}
    safetensors.save(tmp_path / "again.safetensors", arrays, {"format": "pt"})
    assert (tmp_path / "again.safetensors").read_bytes() == blob  # the same arrays, the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.safetensors", "t.safetensors"]  # no temporaries


def test_bf16_is_widened_by_shifting_and_rows_and_out_read_in_place(tmp_path):
    values = np.array([[1.0, -2.5, 2.0**127], [0.15625, -0.0, 2.0**-126]], np.float32)  # exact in bf16
    top = (values.view(np.uint32) >> 16).astype("<u2")
    path = raw_file(
        tmp_path / "bf16.safetensors", {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}, top.tobytes()
    )
    np.testing.assert_array_equal(safetensors.load(path)["w"], values)
    rng = np.random.default_rng(1)
    arrays = {"big": rng.standard_normal((7, 5)).astype(np.float32), "z": rng.standard_normal(3)}
    safetensors.save(tmp_path / "t.safetensors", arrays)
    header = safetensors.read_header(tmp_path / "t.safetensors")
    with safetensors.open_file(header) as f:
        np.testing.assert_array_equal(safetensors.read_tensor(f, header, "big", rows=(2, 5)), arrays["big"][2:5])
        out = np.empty((7, 5), np.float32)
        assert safetensors.read_tensor(f, header, "big", out=out) is out  # straight into it
        np.testing.assert_array_equal(out, arrays["big"])
        wide = np.empty((7, 5), np.float64)
        safetensors.read_tensor(f, header, "big", out=wide)  # cast as NumPy casts
        np.testing.assert_array_equal(wide, arrays["big"].astype(np.float64))
        with pytest.raises(ValueError, match="shape"):
            safetensors.read_tensor(f, header, "big", out=np.empty((5, 7), np.float32))
        with pytest.raises(ValueError, match="rows"):
            safetensors.read_tensor(f, header, "big", rows=(3, 9))


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="complex128"):
        safetensors.save(tmp_path / "x", {"w": np.zeros(2, complex)})
    with pytest.raises(ValueError, match="string"):
        safetensors.save(tmp_path / "x", {3: np.zeros(2)})
    with pytest.raises(ValueError, match="strings"):
        safetensors.save(tmp_path / "x", {"w": np.zeros(2)}, {"format": 1})
    assert not (tmp_path / "x").exists()


F32 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
HOSTILE = {  # name -> (header, data, length field or None, words of the message)
    "a shape that lies about its size": ({"w": {**F32, "shape": [2, 3]}}, bytes(16), None, ["needs 24 bytes"]),
    "10**12 elements in 4 bytes": (
        {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4]}},
        bytes(4),
        None,
        ["4,000,000,000,000 bytes"],
    ),
    "10**12 elements the offsets claim too": (
        {"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}},
        bytes(16),
        None,
        ["claims bytes [0, 4,000,000,000,000)", "16 bytes"],
    ),
    "offsets past the end": ({"w": {**F32, "data_offsets": [8, 24]}}, bytes(16), None, ["[8, 24)"]),
    "end before begin": ({"w": {**F32, "data_offsets": [16, 0]}}, bytes(16), None, ["[16, 0)"]),
    "negative offsets": ({"w": {**F32, "data_offsets": [-16, 0]}}, bytes(16), None, ["[-16, 0)"]),
    "overlapping tensors": (
        {"a": F32, "b": {**F32, "data_offsets": [8, 24]}},
        bytes(24),
        None,
        ["'b'", "overlaps"],
    ),
    "a hole between tensors": ({"a": F32, "b": {**F32, "data_offsets": [20, 36]}}, bytes(36), None, ["hole"]),
    "bytes after the last tensor": ({"w": F32}, bytes(20), None, ["4 bytes after the last tensor"]),
    "a header longer than the file": ({"w": F32}, bytes(16), 10**7, ["10,000,000 bytes", "only"]),
    "a header longer than any header": ({"w": F32}, bytes(16), 2**63, ["more than a header may hold"]),
    "an unknown dtype": ({"w": {**F32, "dtype": "F8_E4M3"}}, bytes(16), None, ["'F8_E4M3'", "convert"]),
    "a float shape": ({"w": {**F32, "shape": [2.0, 2]}}, bytes(16), None, ["whole numbers"]),
    "a bool in the shape": ({"w": {**F32, "shape": [True, 16]}}, bytes(16), None, ["whole numbers"]),
    "a missing field": ({"w": {"dtype": "F32", "shape": [4]}}, bytes(16), None, ["exactly dtype"]),
    "an extra field": ({"w": {**F32, "more": 1}}, bytes(16), None, ["exactly dtype"]),
    "metadata that is not strings": ({"__metadata__": {"a": 1}, "w": F32}, bytes(16), None, ["__metadata__"]),
    "a header that is a list": ([1, 2], b"", None, ["not a JSON object"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_lying_header_is_refused_before_anything_big_is_allocated(tmp_path, case):
    header, data, length, words = HOSTILE[case]
    path = raw_file(tmp_path / "bad.safetensors", header, data, length)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            safetensors.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert all(word in message for word in words), message
    assert peak < SMALL, peak


@pytest.mark.parametrize(
    "blob, words",
    [
        (b"", "too few"),
        (b"\x05\x00\x00", "too few"),
        ((6).to_bytes(8, "little") + b'{"a":1', "unreadable header"),
        ((4).to_bytes(8, "little") + b"\xff\xfe{}", "unreadable header"),
        ((len(b'{"w":1,"w":2}')).to_bytes(8, "little") + b'{"w":1,"w":2}', "appears twice"),
        ((4000).to_bytes(8, "little") + b"[" * 4000, "unreadable header"),
    ],
)
def test_a_file_that_is_no_safetensors_is_refused_in_one_line(tmp_path, blob, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match=words) as info:
        safetensors.read_header(path)
    assert "\n" not in str(info.value)


def test_missing_files_folders_and_names_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        safetensors.read_header(tmp_path / "none.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):
        safetensors.read_header(tmp_path)
    safetensors.save(tmp_path / "t.safetensors", {"w": np.zeros(3)})
    with pytest.raises(CheckpointError, match="no tensor 'v'"):
        safetensors.load(tmp_path / "t.safetensors", ["v"])


def test_a_file_cut_after_its_header_was_read_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    safetensors.save(path, {"w": np.arange(100.0)})
    header = safetensors.read_header(path)
    path.write_bytes(path.read_bytes()[:-8])
    with safetensors.open_file(header) as f, pytest.raises(CheckpointError, match="ends inside tensor 'w'"):
        safetensors.read_tensor(f, header, "w")


@pytest.mark.hf
def test_hugging_faces_library_reads_ours_and_we_read_its(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(2)
    arrays = {
        "x": rng.standard_normal((3, 5)),
        "y": rng.standard_normal(7).astype(np.float32),
        "h": rng.standard_normal(4).astype(np.float16),
        "i": np.arange(4, dtype=np.int32),
    }
    safetensors.save(tmp_path / "ours.safetensors", arrays, {"format": "np"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert sorted(theirs) == sorted(arrays)
    for name, want in arrays.items():
        np.testing.assert_array_equal(theirs[name], want)
        assert theirs[name].dtype == want.dtype
    st.save_file(arrays, str(tmp_path / "theirs.safetensors"), metadata={"format": "np"})
    back = safetensors.load(tmp_path / "theirs.safetensors")
    for name, want in arrays.items():
        np.testing.assert_array_equal(back[name], want)
