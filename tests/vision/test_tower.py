"""VisionTower's layer slicing leaves the wrapped tower whole (regression: transformers' lazily installed
output hooks)."""

import torch
from transformers import AutoModel, CLIPVisionConfig

from hires_vlm.vision import VisionTower


def test_a_sliced_first_forward_leaves_every_hidden_state_to_later_full_ones():
    cfg = CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                           num_attention_heads=2)
    torch.manual_seed(0)
    tower_model = AutoModel.from_config(cfg).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        penultimate = VisionTower(tower_model, -2)(x)  # the first forward of this tower runs 3 of its 4 layers
        full = tower_model(pixel_values=x, output_hidden_states=True).hidden_states
        last = VisionTower(tower_model, -1)(x)
    assert len(full) == 5
    assert torch.allclose(penultimate, full[-2][:, 1:], atol=1e-6)
    assert torch.allclose(last, full[-1][:, 1:], atol=1e-6) and not torch.allclose(last, penultimate)
