"""A slow, obviously-right Llama forward written out by hand, with interventions applied in plain loops.

It shares nothing with the engine or with transformers' attention code: RMSNorm, RoPE, attention scores,
softmax and SwiGLU are spelled out for one example at a time. Tests first check that it reproduces the HF
model's logits, then use it as the reference for every intervention.
"""

import torch


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def with_mlp(layer, x, eps):
    """The residual stream ``x`` [S, d_model] after ``layer``'s MLP block (RMSNorm, SwiGLU, added back)."""
    m = layer.mlp
    h = _rms(x, layer.post_attention_layernorm.weight, eps)
    return x + (torch.nn.functional.silu(h @ m.gate_proj.weight.T) * (h @ m.up_proj.weight.T)) @ m.down_proj.weight.T


def _rope(x, positions, theta):
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = positions[:, None].float() * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    rotated = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + rotated * sin


@torch.no_grad()
def reference_last_logits(model, ids, head_patches=(), knockouts=(), record=None):
    """``ids``: [S] one example. ``head_patches``: (layer, component, position, head, new_vector, alpha).
    ``knockouts``: (from_layer, query_position, key_position). ``record``: a dict that receives
    (layer, component) -> [S, units, d] after patching."""
    cfg = model.config
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    theta = cfg.rope_parameters["rope_theta"]
    S = len(ids)
    pos = torch.arange(S)
    x = model.model.embed_tokens.weight[ids].clone()

    def patch(layer, component, t):  # t: [S, units, d]
        for l, comp, p, h, value, alpha in head_patches:
            if l == layer and comp == component:
                t[p, h] = t[p, h] + alpha * (value - t[p, h])
        if record is not None:
            record[(layer, component)] = t.clone()
        return t

    for layer_idx, layer in enumerate(model.model.layers):
        a = layer.self_attn
        h_in = _rms(x, layer.input_layernorm.weight, cfg.rms_norm_eps)
        q = patch(layer_idx, "q", (h_in @ a.q_proj.weight.T).view(S, H, d).clone())
        k = patch(layer_idx, "k", (h_in @ a.k_proj.weight.T).view(S, KV, d).clone())
        v = patch(layer_idx, "v", (h_in @ a.v_proj.weight.T).view(S, KV, d).clone())
        heads = torch.zeros(S, H, d)
        for head in range(H):
            kvh = head // (H // KV)
            qh, kh = _rope(q[:, head], pos, theta), _rope(k[:, kvh], pos, theta)
            for i in range(S):
                scores = torch.full((S,), float("-inf"))
                for j in range(i + 1):
                    scores[j] = (qh[i] @ kh[j]) / d**0.5
                for from_layer, qp, kp in knockouts:
                    if layer_idx >= from_layer and qp == i and kp <= i:
                        scores[kp] = torch.finfo(torch.float32).min
                w = torch.softmax(scores, -1)
                heads[i, head] = w @ v[:, kvh]
        heads = patch(layer_idx, "head_out", heads)
        x = x + heads.reshape(S, H * d) @ a.o_proj.weight.T
        x = with_mlp(layer, x, cfg.rms_norm_eps)
    x = _rms(x, model.model.norm.weight, cfg.rms_norm_eps)
    return x[-1] @ model.lm_head.weight.T
