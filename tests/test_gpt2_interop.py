"""scratchlm's GPT-2 against transformers' GPT2LMHeadModel: the same folder -> the same logits, loss and gradients;
to_hf -> from_hf exactly; the KV cache against full forward passes; and the tokenizer's files.

The fixtures in ``tests/reference/hf/`` were written by ``tests/reference/make_hf_reference.py`` with PyTorch and
transformers (versions and cases in its ``manifest.json``); these tests need neither. Each case (1 and 2 layers,
GELU-tanh under both of transformers' names and the exact GELU, an odd ε, an n_inner of its own; float64 and
float32) is a GPT-2 folder as ``save_pretrained`` writes it, read by :func:`scratchlm.interop.from_hf` on the
NumPy reference and fused paths. Its ids hold id 0, which GPT-2 reads as a token: the model has ``pad_id=None``.

Bars, relative per tensor (max|a − b| / max|b|, b transformers'), float64 / float32, and the worst measured
(transformers 5.25, PyTorch 2.14, NumPy reference and fused paths):
    forward    logits at every position, the loss of labels=x          1e-9 / 1e-5     6.6e-16 / 3.4e-7
    gradient   every parameter                                          1e-9 / 1e-4     2.1e-15 / 1.1e-6
The loss is labels=x's (positions 0..T-2 predicting x[:, 1:]) computed by PyTorch in the case's dtype:
``GPT2LMHeadModel(x, labels=x).loss`` casts the logits to float32 first, also in float64, so it is held to
float32's bar (2e-6; measured 1.2e-7).
The key projection's bias gets no gradient in exact arithmetic (softmax ignores the per-query constant q·bk):
it is compared on the scale of the largest gradient. The live tests (marker ``hf``) make random GPT-2s with
transformers in-process, and load what :func:`scratchlm.interop.to_hf` writes into transformers.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from scratchlm import get_backend, safetensors
from scratchlm.errors import CheckpointError, ModelError
from scratchlm.interop import from_hf, hf_tokenizer, to_hf
from scratchlm.models import TransformerLM
from tests.helpers.reference import gradient_errors, relative

REFERENCE = Path(__file__).parent / "reference"
FIXTURES = REFERENCE / "hf"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = sorted(MANIFEST["cases"])
FORWARD = {"float64": 1e-9, "float32": 1e-5}
GRADIENT = {"float64": 1e-9, "float32": 1e-4}


def load(name):
    """The fixture's reference arrays, as a dict."""
    with np.load(FIXTURES / name / "reference.npz") as data:
        return dict(data)


def read(folder, kernels="reference", **options):
    """from_hf of ``folder`` on the NumPy ``kernels`` path."""
    return from_hf(folder, backend=get_backend("numpy", kernels=kernels), **options)


def compare(model, ref, dtype):
    """The model's logits, loss of labels=x and gradients against transformers' ``ref``; the worst errors."""
    x = ref["x"]
    logits, _ = model.forward(x)
    assert logits.dtype == np.dtype(dtype)
    assert relative(logits, ref["logits"]) <= FORWARD[dtype]
    loss, grads = model.loss_and_grads(x[:, :-1], x[:, 1:])  # labels=x: position t predicts x[:, t + 1]
    assert relative(loss, ref["loss"]) <= FORWARD[dtype]
    assert relative(loss, ref["hf_loss"]) <= 2e-6
    want = {k[len("grads/") :]: v for k, v in ref.items() if k.startswith("grads/")}
    assert sorted(want) == sorted(model.params)
    errors = gradient_errors(grads, want)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRADIENT[dtype], f"{worst}: {errors[worst]:.3g}"


@pytest.fixture(params=["reference", "fused"])
def kernels(request):
    return request.param


@pytest.mark.gradcheck
@pytest.mark.parametrize("name", CASES)
def test_logits_loss_and_gradients_are_transformers(name, kernels):
    case, ref = MANIFEST["cases"][name], load(name)
    model = read(FIXTURES / name, kernels)
    assert model.pad_id is None and (ref["x"] == 0).any(), "GPT-2 reads id 0 as a token: the fixtures use it"
    assert model.backend.dtype == np.dtype(case["dtype"])
    assert model.config["layernorm_epsilon"] == case.get("layer_norm_epsilon", 1e-5)
    assert model.dense_dim == case.get("n_inner", 4 * case["n_embd"])
    compare(model, ref, case["dtype"])


@pytest.mark.parametrize("name", CASES)
def test_to_hf_writes_transformers_tensors_and_from_hf_reads_them_back_exactly(name, tmp_path):
    model = read(FIXTURES / name)
    to_hf(model, tmp_path / "out")
    theirs = safetensors.load(FIXTURES / name / "model.safetensors")
    ours = safetensors.load(tmp_path / "out" / "model.safetensors")
    assert sorted(ours) == sorted(theirs)  # transformers' names: prefixed, lm_head left to the tie
    assert all(np.array_equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in theirs)
    assert safetensors.read_header(tmp_path / "out" / "model.safetensors").metadata == {"format": "pt"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    given = json.loads((FIXTURES / name / "config.json").read_text())
    for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "layer_norm_epsilon"):
        assert config[field] == given.get(field), field
    assert config["n_inner"] == (given.get("n_inner") or 4 * given["n_embd"])
    back = read(tmp_path / "out")
    assert back.config == model.config
    assert all(np.array_equal(p, model.params[k]) for k, p in back.params.items())
    to_hf(back, tmp_path / "again")
    for file in ("config.json", "model.safetensors"):
        assert (tmp_path / "again" / file).read_bytes() == (tmp_path / "out" / file).read_bytes(), file


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "relu"])
def test_any_expressible_model_round_trips_bit_for_bit(tmp_path, dtype, activation):
    rng = np.random.default_rng(3)
    model = TransformerLM(
        17, 9, embed_dim=6, dense_dim=10, num_heads=3, key_dim=2, num_layers=2, block="gpt", dtype=dtype,
        activation=activation, layernorm_epsilon=2e-5, tie_embeddings=True, dropout=0.1, pad_id=None,
    )  # fmt: skip
    for p in model.params.values():
        p[...] = rng.standard_normal(p.shape)
    to_hf(model, tmp_path)
    back = from_hf(tmp_path)
    differ = {k for k in model.config if back.config[k] != model.config[k]}
    assert differ <= {"init", "seed"}, differ  # how the weights were drawn, which the weights replace
    assert all(np.array_equal(p, model.params[k]) for k, p in back.params.items())
    x = rng.integers(0, 17, (2, 9))
    np.testing.assert_array_equal(back.forward(x)[0], model.forward(x)[0])


@pytest.mark.parametrize("kernels", ["reference", "fused"])
def test_cached_generation_equals_greedy_full_forward_passes(kernels):
    """GPT-2 read from a folder, prompts holding id 0: generate's KV cache gives the greedy argmax of full forward
    passes, also past n_positions (the window slides)."""
    model = read(FIXTURES / "gpt2_2layer_gelu-float64", kernels)
    prompt = np.array([[0, 4, 0], [7, 0, 0]])
    out = model.generate(prompt, 20, temperature=0)  # 3 + 20 > n_positions 16
    ids = prompt
    for k in range(20):
        logits, _ = model.forward(ids[:, -model.sequence_length :])
        want = logits[:, -1].argmax(axis=-1)
        np.testing.assert_array_equal(out[:, k], want, err_msg=f"token {k}")
        ids = np.concatenate([ids, want[:, None]], axis=1)


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(block="book"), "block 'book'"),
        (dict(tie_embeddings=False), "an output layer of its own"),
        (dict(use_bias=False), "no biases"),
        (dict(key_dim=4), r"num_heads \* key_dim != embed_dim"),
        (dict(pad_id=0), "pad_id 0"),
    ],
)
def test_to_hf_refuses_what_gpt2_cannot_express(tmp_path, options, words):
    config = dict(embed_dim=6, dense_dim=8, num_heads=2, key_dim=3, block="gpt", tie_embeddings=True, pad_id=None)
    model = TransformerLM(11, 8, **{**config, **options})
    with pytest.raises(ModelError, match=words):
        to_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ModelError, match="TransformerLM"):
        to_hf(object(), tmp_path / "out")


def test_the_tokenizer_files_go_with_the_model(tmp_path):
    assert hf_tokenizer(FIXTURES / CASES[0]) is None  # the fixtures hold no tokenizer

    class Files:
        vocab_size, eos_id = 11, 10

        def to_files(self, folder):
            (Path(folder) / "vocab.json").write_text("{}")

    model = read(FIXTURES / "gpt2_1layer-float64")
    to_hf(model, tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["eos_token_id"] is None  # transformers' default 50256 is no id of this model
    to_hf(model, tmp_path / "out", Files())
    assert (tmp_path / "out" / "vocab.json").read_text() == "{}"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 10  # the tokenizer's end of text
    big = TransformerLM(50257, 4, embed_dim=2, dense_dim=2, num_heads=1, key_dim=2, block="gpt",
                        tie_embeddings=True, pad_id=None)  # fmt: skip
    to_hf(big, tmp_path / "big")
    assert "eos_token_id" not in json.loads((tmp_path / "big" / "config.json").read_text())  # GPT-2's 50256
    with pytest.raises(CheckpointError, match="without its merges.txt"):
        hf_tokenizer(tmp_path / "out")
    Files.vocab_size = 12
    with pytest.raises(ModelError, match="12 ids, more than the model's vocab_size 11"):
        to_hf(model, tmp_path / "other", Files())


def test_hf_tokenizer_reads_the_bpe_files(tmp_path):
    bpe = pytest.importorskip("scratchlm.bpe")
    if not all(hasattr(bpe.BPETokenizer, m) for m in ("train", "from_files", "to_files")):
        pytest.skip("scratchlm.bpe.BPETokenizer is not finished")
    tokenizer = bpe.BPETokenizer.train("the quick brown fox jumps over the lazy dog. " * 30, 270)
    model = TransformerLM(tokenizer.vocab_size, 8, embed_dim=4, dense_dim=8, num_heads=2, key_dim=2, block="gpt",
                          tie_embeddings=True, pad_id=None)  # fmt: skip
    to_hf(model, tmp_path, tokenizer)
    back = hf_tokenizer(tmp_path)
    np.testing.assert_array_equal(back.encode("the lazy fox"), tokenizer.encode("the lazy fox"))


# -- live comparisons with transformers (marker hf) --------------------------------------------------------------


def maker():
    """tests/reference/make_hf_reference.py, imported."""
    spec = importlib.util.spec_from_file_location("make_hf_reference", REFERENCE / "make_hf_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.hf
def test_fixtures_are_reproducible(tmp_path):
    """make_hf_reference.py, run here with transformers, writes the committed arrays and tensors again."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make, name = maker(), "gpt2_2layer_eps_inner-float64"
    assert make.CASES[name] == MANIFEST["cases"][name]
    made, ref = make.make_case(make.CASES[name], tmp_path), load(name)
    assert sorted(made) == sorted(ref)
    for key, want in ref.items():
        if want.dtype.kind == "f":
            assert relative(made[key], want) <= 1e-12, key
        else:
            np.testing.assert_array_equal(made[key], want, err_msg=key)
    now, committed = (safetensors.load(f / "model.safetensors") for f in (tmp_path, FIXTURES / name))
    assert sorted(now) == sorted(committed)
    assert all(np.array_equal(now[k], committed[k]) for k in committed)


@pytest.mark.hf
@pytest.mark.gradcheck
def test_random_gpt2s_made_live_match(tmp_path):
    """Random configurations (SCRATCHLM_HF_SEED, SCRATCHLM_HF_CASES) made with transformers in-process."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    make = maker()
    rng = np.random.default_rng(int(os.environ.get("SCRATCHLM_HF_SEED", "0")))
    for k in range(int(os.environ.get("SCRATCHLM_HF_CASES", "3"))):
        n_head = int(rng.integers(1, 4))
        case = {
            "vocab_size": int(rng.integers(5, 40)),
            "n_positions": int(rng.integers(4, 12)),
            "n_embd": n_head * int(rng.integers(1, 5)),
            "n_layer": int(rng.integers(1, 4)),
            "n_head": n_head,
            "n_inner": int(rng.integers(1, 20)),
            "layer_norm_epsilon": float(10 ** rng.uniform(-6, -2)),
            "activation_function": str(rng.choice(["gelu_new", "gelu_pytorch_tanh", "gelu", "relu"])),
            "dtype": "float64",
            "seed": 1000 + k,
        }
        ref = make.make_case(case, tmp_path / str(k))
        compare(read(tmp_path / str(k)), ref, "float64")


@pytest.mark.hf
def test_transformers_reads_what_to_hf_writes(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = read(FIXTURES / "gpt2_2layer_eps_inner-float64")
    to_hf(model, tmp_path)
    theirs, info = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path, torch_dtype=torch.float64, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    x = load("gpt2_2layer_eps_inner-float64")["x"]
    with torch.no_grad():
        logits = theirs(torch.from_numpy(x)).logits.numpy()
    assert relative(model.forward(x)[0], logits) <= FORWARD["float64"]
