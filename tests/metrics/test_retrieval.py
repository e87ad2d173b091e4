"""Retrieval recall@K: vectorised ranks against a brute-force loop, ties included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlpkit.metrics.retrieval import retrieval_ranks, retrieval_recall


def _brute_force(scores: list[list[float]], text_to_image: list[int], ks=(1, 5, 10)):
    """Sort each query's candidates by (score desc, correct last) and read the position of the first hit."""
    num_images, num_texts = len(scores), len(scores[0])
    text_ranks = []
    for i in range(num_images):
        order = sorted(range(num_texts), key=lambda t: (-scores[i][t], text_to_image[t] == i))
        text_ranks.append(next(pos for pos, t in enumerate(order) if text_to_image[t] == i))
    image_ranks = []
    for t in range(num_texts):
        order = sorted(range(num_images), key=lambda i: (-scores[i][t], i == text_to_image[t]))
        image_ranks.append(order.index(text_to_image[t]))
    txt = {k: 100.0 * sum(r < k for r in text_ranks) / num_images for k in ks}
    img = {k: 100.0 * sum(r < k for r in image_ranks) / num_texts for k in ks}
    return text_ranks, image_ranks, txt, img


@st.composite
def _problem(draw):
    num_images = draw(st.integers(1, 12))
    per_image = draw(st.lists(st.integers(1, 6), min_size=num_images, max_size=num_images))
    text_to_image = [i for i, n in enumerate(per_image) for _ in range(n)]
    perm = draw(st.permutations(range(len(text_to_image))))
    text_to_image = [text_to_image[p] for p in perm]
    # Few distinct values so that ties are frequent.
    levels = draw(st.integers(1, 5))
    values = st.integers(0, levels).map(float)
    scores = draw(st.lists(st.lists(values, min_size=len(text_to_image), max_size=len(text_to_image)),
                           min_size=num_images, max_size=num_images))  # fmt: skip
    return scores, text_to_image


@settings(max_examples=100, deadline=None)
@given(_problem())
def test_matches_brute_force_with_ties(problem):
    scores, text_to_image = problem
    r = retrieval_recall(torch.tensor(scores), torch.tensor(text_to_image), ks=(1, 2, 5, 10))
    text_ranks, image_ranks, txt, img = _brute_force(scores, text_to_image, ks=(1, 2, 5, 10))
    assert r.text_ranks.tolist() == text_ranks
    assert r.image_ranks.tolist() == image_ranks
    assert r.text_r == pytest.approx(txt)
    assert r.image_r == pytest.approx(img)


def test_matches_brute_force_on_seeded_flickr_sized_block():
    g = torch.Generator().manual_seed(0)
    num_images = 40
    text_to_image = torch.arange(num_images).repeat_interleave(5)[torch.randperm(5 * num_images, generator=g)]
    scores = torch.randn(num_images, 5 * num_images, generator=g)
    scores[text_to_image, torch.arange(5 * num_images)] += (
        1.5  # informative scores: recalls strictly inside (0, 100)
    )
    r = retrieval_recall(scores, text_to_image)
    text_ranks, image_ranks, txt, img = _brute_force(scores.tolist(), text_to_image.tolist())
    assert r.text_ranks.tolist() == text_ranks and r.image_ranks.tolist() == image_ranks
    assert r.text_r == pytest.approx(txt) and r.image_r == pytest.approx(img)
    assert 0 < r.text_r[1] < 100 and 0 < r.image_r[1] < 100
    assert r.r_mean == pytest.approx((sum(txt.values()) + sum(img.values())) / 6)


def test_perfect_and_constant_scores():
    text_to_image = torch.tensor([0, 0, 1, 1, 2])
    perfect = torch.zeros(3, 5)
    perfect[text_to_image, torch.arange(5)] = 1.0
    r = retrieval_recall(perfect, text_to_image)
    assert r.text_r == {1: 100.0, 5: 100.0, 10: 100.0} and r.image_r == {1: 100.0, 5: 100.0, 10: 100.0}
    # Ties go against the query: a constant matrix ranks every correct item after all incorrect ones.
    const = retrieval_ranks(torch.zeros(3, 5), text_to_image)
    assert const[0].tolist() == [3, 3, 4] and const[1].tolist() == [2] * 5


def test_bad_inputs():
    t2i = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match=r"2-D tensor"):
        retrieval_recall(torch.zeros(2, 3, 1), t2i)
    with pytest.raises(ValueError, match=r"shape \[num_texts\] = \[4\], got \(3,\)"):
        retrieval_recall(torch.zeros(2, 4), t2i)
    with pytest.raises(ValueError, match=r"in \[0, 2\), got range \[0, 2\]"):
        retrieval_recall(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"1 image\(s\) have no text \(e.g. image indices \[2\]\)"):
        retrieval_recall(torch.zeros(3, 3), t2i)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]]), t2i)
    with pytest.raises(TypeError, match="integer image indices"):
        retrieval_recall(torch.zeros(2, 3), t2i.float())
    with pytest.raises(TypeError, match="float tensor"):
        retrieval_recall(torch.zeros(2, 3, dtype=torch.long), t2i)
    with pytest.raises(ValueError, match="ks must be positive"):
        retrieval_recall(torch.zeros(2, 3), t2i, ks=(0,))
