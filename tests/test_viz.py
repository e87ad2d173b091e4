"""Drawing helpers: titles wrapped inside their axes, boxes drawn in pixels."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from vlpkit.viz import draw_detections, prediction_grid, wrap_title  # noqa: E402


def test_wrap_title_keeps_every_word_of_a_short_text():
    text = "there is a large red circle above a small blue square and a green star"
    lines = wrap_title(text, width=30).split("\n")
    assert all(len(line) <= 30 for line in lines) and " ".join(lines) == text


def test_wrap_title_cuts_a_degenerate_caption_with_an_ellipsis():
    text = ", ".join(["a large square"] * 20)
    lines = wrap_title(text, width=40, max_lines=3).split("\n")
    assert len(lines) == 3 and lines[-1].endswith("...") and all(len(line) <= 40 for line in lines)


def test_boxes_are_drawn_in_pixels():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    draw_detections(ax, torch.zeros(3, 40, 80), torch.tensor([[0.5, 0.5, 0.5, 0.25]]), ["circle"], title="t")
    (rect,) = ax.patches
    assert rect.get_xy() == (20.0, 15.0) and rect.get_width() == 40.0 and rect.get_height() == 10.0
    plt.close(fig)


def test_prediction_grid_keeps_only_detections_above_the_threshold():
    pred = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]), "labels": torch.tensor([0, 1]),
            "scores": torch.tensor([0.9, 0.2]), "caption": "a circle"}
    fig = prediction_grid([torch.zeros(3, 32, 32)], [pred], ["circle", "square"], columns=2)
    assert len(fig.axes[0].patches) == 1 and fig.axes[0].texts[0].get_text().startswith("circle 0.90")
    import matplotlib.pyplot as plt

    plt.close(fig)
