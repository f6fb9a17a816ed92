"""Multimodal rotary positions (mRoPE) of the Qwen2-VL family, as a pure function.

Qwen2-VL / Qwen2.5-VL give every token three position components (temporal, height, width). Text
tokens advance all three together; the `t·h·w / merge²` tokens of an image share the temporal index
of the image's start and take its start plus their row and column in the merged patch grid; text
after an image resumes at the image's start plus max(h, w) / merge. Padding (attention_mask 0) gets 0.
Qwen3-VL's `get_rope_index` gives images the same positions (it differs only for videos, which it
splits into one image per frame); its "interleaved" mRoPE is in how the rotary embedding assigns
frequencies to the three components, inside the model, from these same `[3, B, L]` ids.

Transformers computes this in `get_rope_index`, whose signature changed between releases (5.23 needs
`mm_token_type_ids`); computing it here keeps one behaviour across versions, and the test checks it
against the installed transformers. For a prompt followed by a completion, the completion's tokens
are plain text: positions `next_position + k` for all three components, so prompts are indexed once
and completions are appended without re-walking the images.
"""

from __future__ import annotations

import torch


def mrope_position_ids(
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, L] 1 for real tokens (left or right padding)
    image_grid_thw: torch.Tensor | None,  # [I, 3] patch grid of each image, in order of appearance
    image_token_id: int,
    spatial_merge_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns position ids `[3, B, L]` and `next_position [B]`: where text after the row continues."""
    B, L = input_ids.shape
    device = input_ids.device
    position_ids = torch.zeros(3, B, L, dtype=torch.long, device=device)
    next_position = torch.zeros(B, dtype=torch.long, device=device)
    grids = image_grid_thw.tolist() if image_grid_thw is not None else []
    image_index = 0
    for b in range(B):
        valid = attention_mask[b].bool()
        ids = input_ids[b][valid].tolist()
        chunks: list[torch.Tensor] = []  # [3, n] pieces in order
        pos, i = 0, 0
        while i < len(ids):
            if ids[i] != image_token_id:
                j = i
                while j < len(ids) and ids[j] != image_token_id:
                    j += 1
                chunks.append(torch.arange(pos, pos + j - i, device=device).expand(3, -1))
                pos += j - i
                i = j
                continue
            if image_index >= len(grids):
                raise ValueError(f"row {b}: more image-token runs than image_grid_thw rows ({len(grids)}); "
                                 f"each image needs its own row in image_grid_thw")
            t, h, w = grids[image_index]
            image_index += 1
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            n = t * gh * gw
            if ids[i : i + n] != [image_token_id] * n:
                run = next((k for k in range(i, len(ids)) if ids[k] != image_token_id), len(ids)) - i
                raise ValueError(f"row {b}: image {image_index - 1} needs {n} image tokens (grid {t}x{h}x{w}, "
                                 f"t*h*w / merge^2), the row has a run of {run}")
            tt = torch.arange(t, device=device).view(t, 1, 1).expand(t, gh, gw).reshape(-1)
            hh = torch.arange(gh, device=device).view(1, gh, 1).expand(t, gh, gw).reshape(-1)
            ww = torch.arange(gw, device=device).view(1, 1, gw).expand(t, gh, gw).reshape(-1)
            chunks.append(torch.stack([tt, hh, ww]) + pos)
            pos += max(gh, gw)
            i += n
        if chunks:
            row = torch.cat(chunks, dim=1)  # [3, n_valid]
            position_ids[:, b, valid] = row
            next_position[b] = row.max() + 1
    if image_index != len(grids):
        raise ValueError(f"{len(grids)} images in image_grid_thw but {image_index} image-token runs in input_ids")
    return position_ids, next_position


def append_text_positions(
    prompt_positions: torch.Tensor,  # [3, N, P]
    next_position: torch.Tensor,  # [N]
    num_new: int,  # T
) -> torch.Tensor:
    """Positions `[3, N, P+T]` of prompts followed by T text tokens (a completion)."""
    offsets = torch.arange(num_new, device=next_position.device)  # [T]
    completion = (next_position[:, None] + offsets[None, :]).expand(3, -1, -1)  # [3, N, T]
    return torch.cat([prompt_positions, completion], dim=2)
