"""dictionary_learning's own trainSAE (real dictionary-learning) on an actstore buffer."""

import pytest
import torch

import actstore
from actstore.errors import IntegrationError
from helpers.integration_store import sparse_store
from helpers.peers import need

need("dictionary_learning.training")
from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer  # noqa: E402

from actstore.integrations.dictionary_learning import DictionaryLearningBuffer, train_dictionary  # noqa: E402

HOOK = "model.layers.3"
D, BATCH, STEPS = 32, 256, 40


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("dl") / "s"
    return path, sparse_store(path, HOOK, d=D)


def _cfg(dim=D):
    return dict(
        trainer=TopKTrainer,
        steps=STEPS,
        activation_dim=dim,
        dict_size=64,
        k=4,
        layer=3,
        lm_name="tiny",
        lr=3e-3,
        warmup_steps=2,
        threshold_start_step=10,
        seed=0,
        device="cpu",
    )


def _fvu(ae, x):
    with torch.no_grad():
        err = ae(x) - x
    return float((err**2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_buffer_gives_the_loaders_batches(store):
    path, _ = store
    buf = DictionaryLearningBuffer(path, HOOK, BATCH, seed=3, threads=1)
    assert buf.d_submodule == D and buf.config["d_submodule"] == D and buf.device == "cpu"
    got = [next(buf) for _ in range(3)]
    ref = actstore.ActivationLoader(path, HOOK, BATCH, seed=3, epochs=1, drop_last=True)
    for a, b in zip(got, ref):
        assert a.shape == (BATCH, D) and torch.equal(a, b)
    state = buf.state_dict()
    nxt = next(buf)
    buf.load_state_dict(state)
    assert torch.equal(next(buf), nxt)
    buf.close()
    ref.close()


@pytest.mark.slow  # about 9 s on 2 shared cores
def test_trainSAE_runs_on_the_buffer_and_learns(store, tmp_path):
    path, x = store
    held = x[-1024:].float()
    torch.manual_seed(0)
    init = TopKTrainer(**{k: v for k, v in _cfg().items() if k != "trainer"}).ae  # the same seed: trainSAE's start
    buf = DictionaryLearningBuffer(path, HOOK, BATCH, seed=0, threads=1)
    try:
        train_dictionary(buf, [_cfg()], steps=STEPS, save_dir=str(tmp_path / "out"))
    finally:
        buf.close()
    ae = AutoEncoderTopK.from_pretrained(str(tmp_path / "out" / "trainer_0" / "ae.pt"))
    before, after = _fvu(init, held), _fvu(ae, held)
    assert after < 0.5 * before, (before, after)
    cfg = (tmp_path / "out" / "trainer_0" / "config.json").read_text()
    assert '"source": "actstore"' in cfg and HOOK in cfg


def test_width_mismatch_is_one_line(store):
    path, _ = store
    buf = DictionaryLearningBuffer(path, HOOK, BATCH, threads=1)
    try:
        with pytest.raises(IntegrationError) as e:
            train_dictionary(buf, [_cfg(dim=D * 2)], steps=2)
    finally:
        buf.close()
    msg = str(e.value)
    assert "\n" not in msg and f"width {D}" in msg and f"activation_dim={2 * D}" in msg


def test_a_source_target_pair_is_one_line(store):
    path, _ = store
    with pytest.raises(IntegrationError, match="dictionary_learning cannot train a transcoder") as e:
        DictionaryLearningBuffer(path, [HOOK, HOOK], BATCH, threads=1)
    assert "\n" not in str(e.value) and "actstore train --arch transcoder" in str(e.value)
