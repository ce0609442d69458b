"""Questions about one clip share its frames: passed as a stride-0 expand, each frame goes through a Q-Former
once (not once per question), and every output equals the one from a materialised copy."""
import torch


def _count_calls(bridge):
    calls = []
    # every frame the bridge encodes passes its own LayerNorm on the ViT output first
    handle = bridge.ln_vision.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls, handle


def test_shared_frames_give_identical_outputs_with_fewer_qformer_passes(model_factory):
    model = model_factory(seed=3)
    t, n_q = 6, 4
    feats = torch.randn(1, t, model.config.n_vision_tokens, model.vision.config.hidden_size)
    shared = feats.expand(n_q, *feats.shape[1:])  # [4, 6, P, D], stride 0 over questions
    copied = shared.contiguous()
    prompts = [f"Question: what colour is shape {i}? Option A: red. Option B: blue. Option C: green." for i in range(n_q)]
    n_opt = [3] * n_q

    calls, h = _count_calls(model.localizer)
    a = model.localize(shared, prompts, 2)
    h.remove()
    assert sum(calls) == t  # one Q-Former pass per frame
    calls, h = _count_calls(model.localizer)
    b = model.localize(copied, prompts, 2)
    h.remove()
    assert sum(calls) == n_q * t
    assert torch.equal(a.keyframes, b.keyframes) and torch.allclose(a.scores, b.scores, atol=1e-6)

    x = model.answer_each_frame(shared, prompts, n_opt)
    y = model.answer_each_frame(copied, prompts, n_opt)
    assert torch.allclose(x.option_logits, y.option_logits, atol=1e-6)
    u = model.answer_frames(shared[:, :3], prompts, n_opt)
    v = model.answer_frames(copied[:, :3], prompts, n_opt)
    assert torch.allclose(u.option_logits, v.option_logits, atol=1e-6)
