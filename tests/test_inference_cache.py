"""The inference path never serves old weights (issue 19).

The no-grad path used to keep the positional convolution's weight norm and the
stacked q/k/v weights between forwards, keyed on each source's identity, version
counter, data pointer, dtype and device. Writes through `.data` and fused optimizer
kernels do not move the version counter, so after them it served the old weights.
Nothing derived from the weights is kept between forwards now (docs/performance.md
section 6.6). Every test here builds the derived values once (an evaluation forward),
changes the weights one way, and checks that the next evaluation equals a freshly
built model holding the same weights. Run against the cached code (before the change):
every `.data` test, fused Adam and AdamW (in train and in eval mode), s3prl's four and the
EMA test and s3prl's Runner.train with each of its optimizers failed (max |difference| 0.06
to 3.0); load_state_dict (in place or assign) and
`.to()` it handled, and the test of them failed only at float64 (then unsupported);
foreach Adam moves the version counters and passed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pruned_upstream.arch import HeadArch, LayerArch
from pruned_upstream.model.attention import SelfAttention
from pruned_upstream.model.wavlm import WavLM, tiny_arch


def _arch():
    """Uneven heads (the padded layout), a dense layer, the positional convolution."""
    layers = (LayerArch(heads=(HeadArch(0, 3, 5), HeadArch(2, 0, 8), HeadArch(3, 6, 2)), ffn_dim=20),
              LayerArch(heads=tuple(HeadArch(i, 8, 8) for i in range(4)), ffn_dim=64))
    return dataclasses.replace(tiny_arch(), layers=layers)


ARCH = _arch()
WAV = torch.randn(2, 3200, generator=torch.Generator().manual_seed(1)) * 0.3
LENGTHS = torch.tensor([3200, 2100])


def _model(seed: int = 0) -> WavLM:
    torch.manual_seed(seed)
    model = WavLM(ARCH)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return model


def evaluate(model) -> list[torch.Tensor]:
    """As s3prl's runner evaluates (downstream/runner.py `evaluate`): eval(), torch.no_grad()."""
    model.eval()
    with torch.no_grad():
        return model(WAV, LENGTHS)


def assert_follows(model, what: str):
    """Evaluation equals a fresh model loaded with `model`'s weights now (same dtype)."""
    fresh = WavLM(ARCH).to(next(model.parameters()).dtype)
    fresh.load_state_dict(model.state_dict())
    ours, ref = evaluate(model), evaluate(fresh)
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max(), (what, float((a - b).abs().max()))


def _changed(model, before) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))


def test_the_inference_path_runs_in_s3prl_frozen_upstream_setting(monkeypatch):
    """s3prl without --upstream_trainable: eval(), no_grad, parameters still requiring a gradient.
    The fused q/k/v path must run there (the speed of docs/performance.md section 6)."""
    calls = []
    real = SelfAttention._inference_output
    monkeypatch.setattr(SelfAttention, "_inference_output", lambda self, *a: calls.append(1) or real(self, *a))
    model = _model()
    assert all(p.requires_grad for p in model.parameters())
    evaluate(model)
    assert len(calls) == 2  # both layers
    with torch.enable_grad():
        model(WAV, LENGTHS)  # a gradient could flow: the layers as written
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.weight_g",
                                  "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.1.self_attn.v_proj.bias",
                                  "encoder.layers.1.self_attn.k_proj.weight"])
@pytest.mark.parametrize("frozen", [False, True], ids=["requires_grad", "frozen_params"])
def test_writes_through_data_are_seen(name, frozen):
    model = _model()
    model.requires_grad_(not frozen)
    evaluate(model)
    param = model.get_submodule(name.rsplit(".", 1)[0]).get_parameter(name.rsplit(".", 1)[1])
    version = param._version
    param.data.mul_(1.5).add_(0.02)  # .data: torch's version counter does not move
    assert param._version == version
    assert_follows(model, f".data.mul_ of {name}")
    param.data = param.data * 0.5 - 0.01  # a new tensor under the same parameter
    assert_follows(model, f".data = ... of {name}")


def _runner_steps(model, optimizer, steps: int = 2, train_mode: bool = True):
    """s3prl's runner with --upstream_trainable (downstream/runner.py `train`): upstream.train(),
    forward with a gradient, backward, clip_grad_norm_, optimizer.step(), zero_grad()."""
    model.train(train_mode)
    for _ in range(steps):
        states = model(WAV, LENGTHS)
        loss = sum(s.square().mean() for s in states)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad()


TORCH_OPTIMIZERS = {
    "Adam_fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "AdamW_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "Adam_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
}


@pytest.mark.parametrize("train_mode", [True, False], ids=["train_mode", "eval_mode"])
@pytest.mark.parametrize("name", sorted(TORCH_OPTIMIZERS))
def test_torch_optimizers_fused_and_not(name, train_mode):
    """Between evaluations the weights move by torch's optimizers (the fused kernels
    do not count versions); also when the model never leaves eval mode."""
    model = _model()
    optimizer = TORCH_OPTIMIZERS[name](list(model.parameters()))
    for _ in range(2):
        evaluate(model)
        before = [t.clone() for t in model.state_dict().values()]
        _runner_steps(model, optimizer, train_mode=train_mode)
        assert _changed(model, before)
        assert_follows(model, name)


S3PRL_OPTIMIZERS = {  # the runner's `optimizer` config (s3prl/optimizers.py get_optimizer)
    "AdamW": {"name": "AdamW", "lr": 1e-2},
    "BertAdam": {"name": "BertAdam_with_schedule", "lr": 1e-2, "warmup_proportion": 0.0},
    "Lamb": {"name": "Lamb_with_schedule", "lr": 1e-2, "warmup_proportion": 0.0},
    "AdamW_with_schedule": {"name": "AdamW_with_schedule", "lr": 1e-2, "warmup_proportion": 0.0},
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lamb's deprecated add_(scalar, tensor) overload
@pytest.mark.parametrize("name", sorted(S3PRL_OPTIMIZERS))
def test_s3prl_optimizers_through_the_runner_loop(name):
    """s3prl's AdamW, BertAdam and Lamb write `p.data` (s3prl/optimizers.py), built as the runner
    builds them (`get_optimizer([upstream], total_steps, config)`)."""
    from s3prl.optimizers import get_optimizer

    model = _model()
    optimizer = get_optimizer([model], 100, S3PRL_OPTIMIZERS[name])
    for _ in range(2):
        evaluate(model)
        before = [t.clone() for t in model.state_dict().values()]
        _runner_steps(model, optimizer)
        assert _changed(model, before)
        assert_follows(model, name)


def test_load_state_dict_in_place_assign_and_to():
    model, other, third = _model(0), _model(1), _model(2)
    evaluate(model)
    model.load_state_dict(other.state_dict())
    assert_follows(model, "load_state_dict")
    evaluate(model)
    model.load_state_dict(third.state_dict(), assign=True)
    assert_follows(model, "load_state_dict(assign=True)")
    evaluate(model)
    model.to(torch.float64)
    out = evaluate(model)
    assert out[-1].dtype == torch.float64
    assert_follows(model, ".to(float64)")
    model.to(torch.float32)
    assert_follows(model, ".to(float32)")


def test_an_ema_teacher_updated_through_data_in_eval_mode():
    """A frozen model whose weights move without any train() call or gradient (an exponential
    moving average written through .data, as weight averaging does)."""
    teacher, student = _model(0).requires_grad_(False).eval(), _model(1)
    for _ in range(3):
        evaluate(teacher)
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.data.mul_(0.5).add_(s.data, alpha=0.5)
        assert_follows(teacher, "EMA through .data")


@pytest.mark.slow  # s3prl's runner end to end (pyproject's markers)
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("name", ["AdamW", "BertAdam", "Lamb"])
def test_s3prl_runner_trains_our_upstream_and_evaluates_its_current_weights(tmp_path, monkeypatch, name):
    """s3prl's own Runner.train (downstream/runner.py) with --upstream_trainable, its `example`
    downstream (random audio, made short here) and s3prl's optimizer: every forward without a
    gradient (the evaluations) equals a fresh model loaded with the upstream's weights then."""
    import s3prl.hub as hub
    from argparse import Namespace

    from s3prl.downstream.example import dataset as example_data
    from s3prl.downstream.runner import Runner

    from pruned_upstream.checkpoints import save_model
    from pruned_upstream.s3prl_plugin.hubconf import pruned_wavlm_local

    ckpt = tmp_path / "tiny.safetensors"
    save_model(_model(), ckpt)
    monkeypatch.setattr(hub, "pruned_wavlm_local", pruned_wavlm_local, raising=False)
    for attr, value in (("SAMPLE_RATE", 3200), ("EXAMPLE_WAV_MIN_SEC", 1), ("EXAMPLE_WAV_MAX_SEC", 1),
                        ("EXAMPLE_DATASET_SIZE", 4)):
        monkeypatch.setattr(example_data, attr, value)
    checked, real = [], WavLM.forward

    def checking_forward(self, wav, lengths=None):
        out = real(self, wav, lengths)
        if not torch.is_grad_enabled() and not self.training:
            fresh = WavLM(self.arch)
            fresh.load_state_dict(self.state_dict())
            fresh.feature_grad_mult = self.feature_grad_mult
            ref = real(fresh.eval(), wav, lengths)
            worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(out, ref))
            checked.append((worst, self.encoder.pos_conv.get_submodule("0").weight_v.detach().clone()))
        return out

    monkeypatch.setattr(WavLM, "forward", checking_forward)
    config = {
        "runner": {"total_steps": 4, "gradient_clipping": 1, "gradient_accumulate_steps": 1, "log_step": 100,
                   "eval_step": 2, "save_step": 100, "max_keep": 1, "eval_dataloaders": ["dev"]},
        "optimizer": {**S3PRL_OPTIMIZERS[name], "lr": 5e-2},
        "downstream_expert": {"datarc": {"num_workers": 0, "train_batch_size": 2, "eval_batch_size": 2},
                              "modelrc": {"input_dim": 16}},
    }
    args = Namespace(mode="train", upstream="pruned_wavlm_local", upstream_ckpt=str(ckpt), upstream_model_config=None,
                     upstream_refresh=False, upstream_trainable=True, upstream_feature_selection="hidden_states",
                     upstream_layer_selection=None, upstream_feature_normalize=False, downstream="example",
                     expdir=str(tmp_path / "exp"), init_ckpt=None, device="cpu", seed=1337, push_to_hf_hub=False,
                     from_hf_hub=False, local_rank=None, evaluate_split="test", hub="torch", expname="x",
                     upstream_model_name=None, upstream_revision=None, hf_hub_org="None")
    Runner(args, config).train()
    evaluations = checked[-4:]  # two evaluations (steps 2 and 4) of the 2 dev batches each
    assert len(checked) >= 4 and all(worst <= 1e-6 for worst, _ in checked), [w for w, _ in checked]
    assert not torch.equal(evaluations[0][1], evaluations[-1][1])  # the optimizer moved the weights in between
