"""What from_hf refuses, each with one line: pickles (never unpickled), folders without model.safetensors, configs
scratchlm cannot take, tensors that are not what the config says, untied heads, non-finite weights; what it
accepts beside transformers' own layout (names without the prefix, the mask buffers, F16); and its memory: each
tensor read straight into its parameter, never a second copy of the weights (tracemalloc)."""

import json
import pickle
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from scratchlm import safetensors
from scratchlm.errors import CheckpointError
from scratchlm.interop import from_hf, gpt2, to_hf
from scratchlm.models import TransformerLM

FIXTURE = Path(__file__).parent / "reference" / "hf" / "gpt2_1layer-float64"


def folder_of(tmp_path, config=None, tensors=None, name="gpt2"):
    """A copy of the 1-layer float64 fixture, its config.json fields updated by ``config`` (None values left out)
    and its tensors replaced by ``tensors(arrays)`` when given."""
    folder = tmp_path / name
    folder.mkdir()
    given = json.loads((FIXTURE / "config.json").read_text())
    given = {k: v for k, v in {**given, **(config or {})}.items() if v is not None}
    (folder / "config.json").write_text(json.dumps(given))
    if tensors is None:
        shutil.copy(FIXTURE / "model.safetensors", folder)
    else:
        safetensors.save(folder / "model.safetensors", tensors(safetensors.load(FIXTURE / "model.safetensors")))
    return folder


class Trap:
    """Unpickling it would create the file ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_pickles_are_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text((FIXTURE / "config.json").read_text())
    for name in ("pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt", "state.pkl"):
        (folder / name).write_bytes(pickle.dumps(Trap(marker)))
        with pytest.raises(CheckpointError, match=f"{name} is a pickle, which can run code when loaded") as info:
            from_hf(folder)
        assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(CheckpointError, match="is a pickle"):
            from_hf(folder / name)
        (folder / name).unlink()
    assert not marker.exists()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    shutil.copy(FIXTURE / "model.safetensors", folder)
    assert from_hf(folder).num_layers == 1  # beside model.safetensors a pickle is left alone
    assert not marker.exists()


def test_folders_that_hold_no_gpt2_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        from_hf(tmp_path / "none")
    with pytest.raises(CheckpointError, match="not a folder: pass the folder"):
        from_hf(FIXTURE / "model.safetensors")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        from_hf(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="sharded"):
        from_hf(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(FIXTURE / "model.safetensors", bare)
    with pytest.raises(CheckpointError, match="no such file.*config.json"):
        from_hf(bare)


@pytest.mark.parametrize(
    "config, words",
    [
        ({"model_type": "bert"}, "model_type is 'bert'; scratchlm reads GPT-2"),
        ({"model_type": None}, "model_type is 'None'"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings must be true"),
        ({"scale_attn_weights": False}, "scale_attn_weights must be true"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx must be false"),
        ({"add_cross_attention": True}, "add_cross_attention must be false"),
        ({"activation_function": "swish"}, "activation_function must be one of gelu_new"),
        ({"n_head": 3}, "n_head must be a divisor of n_embd 8"),
        ({"n_layer": 0}, "n_layer must be a whole number >= 1"),
        ({"n_embd": 8.0}, "n_embd must be a whole number"),
        ({"n_inner": -1}, "n_inner must be null"),
        ({"layer_norm_epsilon": 0}, "layer_norm_epsilon must be a finite number > 0"),
        ({"resid_pdrop": 2}, "resid_pdrop must be a rate"),
        ({"n_layer": 2}, "has no tensor 'transformer.h.1.ln_1.weight', which the GPT-2 of its config.json has"),
        ({"vocab_size": 12}, r"'transformer.wte.weight' has shape \(11, 8\), but the GPT-2 of its config.json has"),
        ({"n_inner": 16}, r"'transformer.h.0.mlp.c_fc.weight' has shape \(8, 32\)"),
        ({"resid_pdrop": 0.1}, r"scratchlm has one: pass from_hf\(..., dropout=rate\)"),
    ],
)
def test_configs_scratchlm_cannot_take_are_refused_before_any_tensor_is_read(tmp_path, config, words):
    with pytest.raises(CheckpointError, match=words) as info:
        from_hf(folder_of(tmp_path, config))
    assert "\n" not in str(info.value)


def test_config_json_must_be_a_json_object(tmp_path):
    folder = folder_of(tmp_path)
    for text, words in (("{", "not valid JSON"), ("[1]", "not a JSON object"), ("[" * 10**5, "not valid JSON")):
        (folder / "config.json").write_text(text)
        with pytest.raises(CheckpointError, match=words):
            from_hf(folder)


def test_the_config_defaults_are_gpt2s_and_dropout_follows_it(tmp_path):
    assert from_hf(folder_of(tmp_path, {"layer_norm_epsilon": None, "n_inner": None}, name="a")).config[
        "layernorm_epsilon"
    ] == pytest.approx(1e-5)
    same = {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}
    assert from_hf(folder_of(tmp_path, same, name="b")).dropout.rate == 0.1
    assert from_hf(folder_of(tmp_path, {"resid_pdrop": 0.1}, name="c"), dropout=0.2).dropout.rate == 0.2


def rename(arrays, old, new):
    """``arrays`` with tensor ``old`` named ``new``."""
    return {new if k == old else k: v for k, v in arrays.items()}


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda a: {**a, "transformer.extra": np.zeros(2)}, r"holds 1 tensor\(s\) that are not GPT-2's"),
        (lambda a: rename(a, "transformer.ln_f.bias", "transformer.ln_f.beta"), "no tensor 'transformer.ln_f.bias'"),
        (lambda a: {**a, "transformer.ln_f.weight": np.ones(8, np.int64)}, "is I64, not floats"),
        (lambda a: {**a, "lm_head.weight": np.zeros((11, 4))}, r"lm_head.weight has shape \(11, 4\)"),
        (lambda a: {**a, "lm_head.weight": a["transformer.wte.weight"] + 1e-12}, "differs from wte.weight"),
        (lambda a: {**a, "transformer.h.0.mlp.c_fc.bias": np.full(32, np.nan)}, "ffn_1/bias holds NaN"),
    ],
)
def test_tensors_that_are_not_what_the_config_says_are_refused(tmp_path, change, words):
    with pytest.raises(CheckpointError, match=words) as info:
        from_hf(folder_of(tmp_path, tensors=change))
    assert "\n" not in str(info.value)


def test_values_beyond_float32_are_refused_when_asked_for_float32(tmp_path):
    def huge(arrays):
        arrays["transformer.wpe.weight"][0, 0] = 1e300
        return arrays

    folder = folder_of(tmp_path, tensors=huge)
    assert from_hf(folder).params["embedding/position_embeddings"][0, 0] == 1e300
    with pytest.raises(CheckpointError, match="position_embeddings holds NaN or infinite values"):
        from_hf(folder, dtype="float32")


def test_names_without_the_prefix_mask_buffers_a_tied_head_and_halves_are_read(tmp_path):
    want = from_hf(FIXTURE)

    def unprefixed(arrays):
        out = {k.removeprefix("transformer."): v for k, v in arrays.items()}
        out["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))  # the causal mask, as older files hold it
        out["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
        out["lm_head.weight"] = arrays["transformer.wte.weight"]
        return out

    got = from_hf(folder_of(tmp_path, tensors=unprefixed, name="unprefixed"))
    assert all(np.array_equal(p, want.params[k]) for k, p in got.params.items())
    halves = from_hf(folder_of(tmp_path, tensors=lambda a: {k: v.astype(np.float16) for k, v in a.items()}, name="h"))
    assert halves.backend.dtype == np.float32
    for name, p in halves.params.items():
        np.testing.assert_array_equal(p, want.params[name].astype(np.float16).astype(np.float32), err_msg=name)


def test_reading_holds_the_weights_once(tmp_path, monkeypatch):
    """Once the model is built, from_hf's peak (tracemalloc) is its weights plus one c_attn (the buffer it is split
    from) and small change: each tensor goes straight into its parameter, and no second copy of the weights is
    made (the token table alone, a quarter of them here, would be 1 MB more)."""
    V, E, L = 4096, 64, 64
    model = TransformerLM(V, L, embed_dim=E, dense_dim=256, num_heads=4, key_dim=16, num_layers=2, block="gpt",
                          activation="gelu_tanh", layernorm_epsilon=1e-5, tie_embeddings=True, pad_id=None)  # fmt: skip
    to_hf(model, tmp_path)
    weights = sum(p.nbytes for p in model.params.values())

    def built(*args, **kwargs):  # the peak from here on is the reading's
        out = TransformerLM(*args, **kwargs)
        tracemalloc.reset_peak()
        return out

    monkeypatch.setattr(gpt2, "TransformerLM", built)
    tracemalloc.start()
    try:
        back = from_hf(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(np.array_equal(p, model.params[k]) for k, p in back.params.items())
    assert peak <= weights + E * 3 * E * 4 + 64 * 1024, (peak, weights)
