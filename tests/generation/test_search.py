"""The model-free search algorithms (vlpkit.generation.beam_search / greedy) on synthetic step functions whose
log-probabilities are known exactly, against exhaustive enumeration and a plain per-image reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vlpkit.generation import apply_length_penalty, beam_search, greedy_search

PAD, BOS, EOS = 0, 1, 2


class TableStep:
    """A stateful step function with a different next-token distribution per image and per prefix.

    logits(prefix) = scale * sum_i W[image, i, prefix_i]: every prefix position and token matters. Like the
    decoder cache it keeps one history per row and follows `reorder`, asserting that the search hands it
    prefixes consistent with that history (so a wrong reorder index is caught, and it also changes which
    image's table a row reads).
    """

    def __init__(self, num_images: int, rows_per_image: int, vocab: int, max_length: int, seed: int,
                 scale: float = 2.0, eos_bias: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weights = torch.randn(num_images, max_length + 1, vocab, vocab, generator=g, dtype=torch.float64)
        self.scale = scale
        self.bias = torch.zeros(vocab, dtype=torch.float64)
        self.bias[EOS] = eos_bias
        self.prefix_length_seen = torch.zeros(num_images, dtype=torch.long)  # per image: longest prefix fed
        self.image_of_row = torch.arange(num_images).repeat_interleave(rows_per_image)
        self.history: torch.Tensor | None = None
        self.calls = 0

    def logprobs(self, image: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """[N] image ids, [N, t] prefixes -> [N, V] float64 log-probabilities."""
        positions = torch.arange(prefix.shape[1])
        logits = self.weights[image[:, None], positions[None], prefix].sum(1) * self.scale + self.bias
        return logits.log_softmax(-1)

    def __call__(self, prefix: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.history is not None:
            assert torch.equal(self.history, prefix[:, :-1]), "prefix does not continue the reordered history"
        self.history = prefix.clone()
        self.prefix_length_seen[self.image_of_row] = prefix.shape[1]
        return self.logprobs(self.image_of_row, prefix).float()

    def reorder(self, index: torch.Tensor) -> None:
        self.history = self.history[index]
        self.image_of_row = self.image_of_row[index]


def reference_beam_search(logprob, num_beams, max_length, min_length, alpha, style, early_stop=True):
    """Textbook beam search for one input, one hypothesis at a time (fairseq rules, see beam_search.py).

    logprob(prefix list) -> list of V floats. Returns the finished (score, tokens) best first.
    """
    k = num_beams
    active = [(0.0, [BOS])]
    finished = []
    for length in range(1, max_length + 1):
        candidates = []
        for summed, prefix in active:
            lp = list(logprob(prefix))
            for token, value in enumerate(lp):
                if token == PAD or (token == EOS and length < min_length):
                    continue
                if length == max_length and token != EOS:
                    continue
                candidates.append((summed + value, prefix + [token]))
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[: 2 * k]
        for rank, (summed, seq) in enumerate(candidates):
            if seq[-1] == EOS and rank < k:
                finished.append((float(apply_length_penalty(torch.tensor(summed), length, alpha, style)), seq[1:]))
        finished = sorted(finished, key=lambda f: -f[0])[:k]
        active = [c for c in candidates if c[1][-1] != EOS][:k]
        if not active:
            break
        if early_stop and len(finished) == k:
            later = range(max(length + 1, min_length), max_length + 1)
            best = max(float(apply_length_penalty(torch.tensor(s), n, alpha, style)) for s, _ in active for n in later)
            if finished[-1][0] >= best:
                break
    return finished


def exhaustive(logprob, vocab, max_length, min_length, alpha, style):
    """Every sequence (EOS last, no PAD) scored by its penalised summed log-probability, best first."""
    words = [t for t in range(vocab) if t not in (PAD, EOS)]
    results = []
    for length in range(max(min_length, 1), max_length + 1):
        for body in itertools.product(words, repeat=length - 1):
            seq = [BOS, *body, EOS]
            summed = sum(logprob(seq[:i])[seq[i]] for i in range(1, len(seq)))
            results.append((float(apply_length_penalty(torch.tensor(summed), length, alpha, style)), seq[1:]))
    return sorted(results, key=lambda r: -r[0])


def rows_of(out, image, n):
    """(score, tokens without padding) of the first n returned hypotheses of one image."""
    seqs = out.all_sequences[image] if out.all_sequences is not None else out.sequences[image][None]
    scores = out.all_scores[image] if out.all_scores is not None else out.scores[image][None]
    rows = []
    for score, seq in zip(scores[:n].tolist(), seqs[:n].tolist()):
        rows.append((score, seq[: seq.index(EOS) + 1]))
    return rows


def run_beam(step, batch, **kw):
    return beam_search(step, batch, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, reorder_fn=step.reorder,
                       **kw)


@pytest.mark.parametrize("style,alpha", [("gnmt", 0.9), ("power", 1.5), ("none", 0.0), ("gnmt", -0.5)])
@pytest.mark.parametrize("min_length", [0, 3])
def test_large_beam_returns_exhaustive_ranking(style, alpha, min_length):
    vocab, max_length = 5, 4  # 3 non-EOS words: 1 + 3 + 9 + 27 = 40 sequences of length <= 4
    batch = 2
    num_seq = sum(3 ** (n - 1) for n in range(max(min_length, 1), max_length + 1))
    step = TableStep(batch, num_seq, vocab, max_length, seed=3)
    out = run_beam(step, batch, num_beams=num_seq, max_length=max_length, min_length=min_length,
                   length_penalty=alpha, length_penalty_style=style, num_return_sequences=num_seq)
    for image in range(batch):
        fn = lambda p, i=image: step.logprobs(torch.tensor([i]), torch.tensor([p]))[0].tolist()  # noqa: E731
        expected = exhaustive(fn, vocab, max_length, min_length, alpha, style)
        got = rows_of(out, image, num_seq)
        assert [g[1] for g in got] == [e[1] for e in expected]
        assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-5)


def test_gnmt_and_power_rank_by_their_formula():
    # A = [EOS] with log-prob -1.0; B = [w, EOS] with log-prob log(0.5) + log(0.4462) = -1.5; alpha = 1:
    # gnmt: A = -1.0 / 1 beats B = -1.5 / (7/6) = -1.286; power: B = -1.5 / 2 = -0.75 beats A = -1.0 / 1.
    first = torch.tensor([0.0, 0.0, math.exp(-1.0), 0.5, 0.5 - math.exp(-1.0) + 0.132])  # [PAD, BOS, EOS, w, x]
    first[4] = 1 - first[2:4].sum()
    second = torch.tensor([0.0, 0.2, math.exp(-1.5) / 0.5, 0.1, 0.0])
    second[4] = 1 - second.sum()

    def logprob_fn(prefix):
        rows = [first if p.numel() == 1 else second if p[1] == 3 else torch.full((5,), 0.25) for p in prefix]
        return torch.stack(rows).log()

    expected = {"gnmt": ([EOS], -1.0), "power": ([3, EOS], -0.75), "none": ([EOS], -1.0)}
    for style, (seq, score) in expected.items():
        for search in ("beam", "exhaustive"):
            if search == "beam":
                out = beam_search(logprob_fn, 1, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, num_beams=3,
                                  max_length=2, length_penalty=1.0, length_penalty_style=style)
                got_seq = out.sequences[0].tolist()
                got = (got_seq[: got_seq.index(EOS) + 1], out.scores[0].item())
            else:
                got = exhaustive(lambda p: logprob_fn(torch.tensor([p]))[0].tolist(), 5, 2, 0, 1.0, style)[0][::-1]
            assert got[0] == seq, (style, search)
            assert got[1] == pytest.approx(score, abs=1e-4), (style, search)


@pytest.mark.parametrize("seed", range(8))
def test_beam_search_matches_per_image_reference(seed):
    """Small beams on a larger space: same hypotheses, scores and number of steps per image as the textbook loop,
    and the early stop never changes the result (a reference that runs every step agrees)."""
    g = torch.Generator().manual_seed(seed)
    batch, vocab, max_length = 4, 7, 8
    num_beams = int(torch.randint(2, 5, (1,), generator=g))
    min_length = int(torch.randint(0, 5, (1,), generator=g))
    style, alpha = [("gnmt", 0.9), ("power", 0.5), ("none", 0.0), ("gnmt", -0.5)][seed % 4]
    step = TableStep(batch, num_beams, vocab, max_length, seed=seed, scale=1.5, eos_bias=1.5)
    out = run_beam(step, batch, num_beams=num_beams, max_length=max_length, min_length=min_length,
                   length_penalty=alpha, length_penalty_style=style, num_return_sequences=num_beams)
    for image in range(batch):
        calls = []

        def fn(p, i=image, calls=calls):
            calls.append(len(p))
            return step.logprobs(torch.tensor([i]), torch.tensor([p]))[0].tolist()

        expected = reference_beam_search(fn, num_beams, max_length, min_length, alpha, style)
        assert step.prefix_length_seen[image] == max(calls)  # the image left the batch when the reference stopped
        full = reference_beam_search(fn, num_beams, max_length, min_length, alpha, style, early_stop=False)
        got = rows_of(out, image, num_beams)
        for ref in (expected, full):
            assert [g[1] for g in got] == [e[1] for e in ref]
            assert [g[0] for g in got] == pytest.approx([e[0] for e in ref], abs=1e-5)
    assert step.calls == step.prefix_length_seen.max()


def test_early_stop_waits_for_longer_hypotheses_the_penalty_favours():
    """[EOS] (p 0.6) is finished first, but with power alpha=1 the beam [a ...] can still reach a better score
    at max_length, so the search must go on (a bound at the next length only, -1.20 / 2 < -0.51, would stop)."""
    def logprob_fn(prefix):
        t = prefix.shape[1]
        row = [1e-9, 1e-9, 0.6, 0.3, 0.1] if t == 1 else [1e-9, 1e-9, 0.9, 0.05, 0.05] if t == 6 else \
            [1e-9, 1e-9, 0.01, 0.9, 0.09]
        return torch.tensor(row).log().expand(prefix.shape[0], -1)

    out = beam_search(logprob_fn, 2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, num_beams=1,
                      max_length=6, length_penalty=1.0, length_penalty_style="power")
    assert out.sequences.tolist() == [[3, 3, 3, 3, 3, EOS]] * 2
    expected = (math.log(0.3) + 4 * math.log(0.9) + math.log(0.9)) / 6
    assert out.scores.tolist() == pytest.approx([expected] * 2, abs=1e-5)
    assert expected > math.log(0.6)


def test_lengths_respect_min_and_max():
    step = TableStep(4, 3, 6, 5, seed=11, scale=3.0)
    out = run_beam(step, 4, num_beams=3, max_length=5, min_length=3, num_return_sequences=3)
    lengths = (out.all_sequences == EOS).float().argmax(-1) + 1
    assert (out.all_sequences == EOS).sum(-1).eq(1).all()  # exactly one EOS each, padding after it
    assert lengths.min() >= 3 and lengths.max() <= 5
    after = torch.arange(out.all_sequences.shape[-1]) >= lengths[..., None]
    assert out.all_sequences[after].eq(PAD).all()


@pytest.mark.parametrize("style,alpha", [("none", 0.9), ("gnmt", 0.0), ("power", -0.7)])
def test_one_beam_equals_greedy(style, alpha):
    """With a penalty that cannot favour longer hypotheses, a one-beam search stops at the first EOS, as greedy."""
    kw = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, max_length=7, min_length=2,
              length_penalty=alpha, length_penalty_style=style)
    beam_step, greedy_step = TableStep(5, 1, 6, 7, seed=5), TableStep(5, 1, 6, 7, seed=5)
    beam = beam_search(beam_step, 5, num_beams=1, reorder_fn=beam_step.reorder, **kw)
    greedy = greedy_search(greedy_step, 5, reorder_fn=greedy_step.reorder, **kw)
    assert torch.equal(beam.sequences, greedy.sequences)
    torch.testing.assert_close(beam.scores, greedy.scores)


def test_greedy_matches_argmax_loop():
    step = TableStep(4, 1, 6, 6, seed=2, scale=1.0)
    out = greedy_search(step, 4, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, max_length=6, min_length=2,
                        length_penalty=1.0, length_penalty_style="power", reorder_fn=step.reorder)
    for image in range(4):
        seq, summed = [BOS], 0.0
        while True:
            lp = step.logprobs(torch.tensor([image]), torch.tensor([seq]))[0]
            lp[PAD] = -math.inf
            if len(seq) < 2:
                lp[EOS] = -math.inf
            if len(seq) == 6:
                token = EOS
            else:
                token = int(lp.argmax())
            summed += float(lp[token])
            seq.append(token)
            if token == EOS:
                break
        got = out.sequences[image].tolist()
        assert got[: len(seq) - 1] == seq[1:] and all(t == PAD for t in got[len(seq) - 1:])
        assert out.scores[image].item() == pytest.approx(summed / (len(seq) - 1), abs=1e-5)


@pytest.mark.parametrize("kw,match", [
    (dict(num_beams=0), "num_beams"), (dict(max_length=0), "max_length"), (dict(min_length=9), "min_length"),
    (dict(num_return_sequences=5), "num_return_sequences"), (dict(length_penalty_style="gnm"), "gnm"),
])
def test_bad_arguments_are_named(kw, match):
    args = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, num_beams=4, max_length=5)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        beam_search(lambda p: torch.zeros(p.shape[0], 5), 2, **args)


def test_bad_step_output_is_named():
    with pytest.raises(ValueError, match=r"logprob_fn must return .*\[N=8, V\]"):
        beam_search(lambda p: torch.zeros(3, 5), 2, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
