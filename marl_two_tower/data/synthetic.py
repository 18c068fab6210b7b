"""Deterministic synthetic MovieLens-like data: the embedded, offline default.

One seed (``SyntheticConfig.seed``) fixes everything. Each planted mechanism has its
own config knob and is described, with the ML-100K statistic behind it, in
``docs/data.md``; the defaults are calibrated to ML-100K by
``benchmarks/synthetic_realism.py --fit`` (statistics of the real file, not typed in).

Item side (the *world*):

* **Popularity.** Item base weight by a random permutation of ranks r = 1..n:
  ``popularity_sigma > 0``: lognormal, ``log w = popularity_sigma * Phi^-1(1 - (r -
  0.5) / n)`` (ML-100K's curve: a flat head that saturates, a long tail of items with
  a handful of ratings); ``0``: Zipf ``w = r^-zipf_exponent`` (the first generator).
* **Genres.** One primary genre per item plus, with probability ``extra_genre_prob``
  each, up to two secondary genres. ``genre_mix="ml-100k"``: genre sizes follow
  ML-100K's genre shares of interactions (:data:`ML100K_GENRE_SHARES`, resampled to
  ``n_genres``); ``"dirichlet"``: random unequal sizes (the first generator).
* **Successors** (``transition_prob > 0``): each item ``a`` has ``transition_successors``
  related items, the next ones after it in its primary genre's chart (the genre's
  items by popularity): a sparse "next item" kernel whose chains keep a direction.
* **Niche items** (``niche_fraction > 0``): the least popular ``niche_fraction`` of
  the catalogue (by base weight) each belong to one user *segment*: an occupation
  (21 segments, equally common; items assigned uniformly).

User side (per user, in chunks of 100k users, each with its own random streams):

* **Demographics.** Gender, age bucket (the ML-1M buckets), occupation; gender and
  age shift the genre preferences (``demographic_shift`` scales the shifts).
* **Taste.** Genre logits ``genre_affinity * N(0, 1) + shift(gender) + shift(age) + b``
  (``b`` makes the mean preference equal the genre mix) and latent factors ``p_u``.
  Drift: the user also has end-of-history tastes, genre logits moved by
  ``genre_drift * N(0, 1)`` and factors by ``taste_drift * N(0, 1)``; at relative
  position ``t in [0, 1]`` of the history the genre comes from the end taste with
  probability ``t`` and the factors are ``(1 - t) p_start + t p_end``: a slow drift.
* **Lengths.** ``history_spread > 0``: ``lo + LogNormal`` with mean
  ``interactions_per_user`` and log-sd ``history_spread``, ``lo = min(min_history,
  ceil(interactions_per_user / 2))`` (a small mean wins over the minimum); ``0``:
  ``min_history + Geometric`` (the first generator). Capped at ``n_items // 2 + 5``.

Each interaction slot of a history, in time order:

1. **Base draw** (always): with probability ``1 - 1/(1 + genre_affinity)`` a genre
   from the (drifting) taste, else global popularity; 4 candidates by popularity
   within it; the one maximising ``<p_u(t), q_i> + Gumbel`` wins (collaborative
   structure beyond genres).
2. **Niche draw** (probability ``niche_rate``): 4 candidates among the niche items
   of the user's segment (by base weight), the same latent pick.
3. **Transition** (probability ``transition_prob``, not at a history's first slot):
   the item is one of the successors (latent pick among them) of the current
   *episode*'s cursor. A history is cut into episodes (each slot begins one with
   probability ``1 / episode_length``); the cursor is the episode's first item, then
   its latest transition, so an episode walks down a genre chart while its other
   draws come and go: items close in time are related, and less so the further apart
   they are (ML-100K's rating sessions; ``episode_length = 1``: a transition follows
   the previous item). Chains (a transition whose source is a transition) are
   resolved level by level: vectorised, O(slots) work per level.

A repeated (user, item) draw keeps its first occurrence. With ``exact_lengths`` the
missing slots are appended at the history's end (end taste, transitions continuing
from the last kept item; round r draws min(2^r, 16) times the missing count and keeps
the earliest new items) until every history has its drawn length (up to
``_TOPUP_ROUNDS`` rounds; on tiny catalogues a history may stay short).
Timestamps: per-user start plus exponential gaps, increasing along the history.

:func:`legacy_config` gives the first generator's settings: with every new knob at
its legacy value the output is bit for bit the first generator's (the mechanisms
draw from separate random streams, so the legacy streams are untouched).

Memory is bounded by one chunk of users whatever ``n_users`` is: the per-slot maths
is O(slots) (genre draws one genre column at a time, the candidate affinities in row
blocks), so 1M users x 55 interactions streams to Parquet with < 1 GB
(:mod:`marl_two_tower.data.synthetic_parquet`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.special import ndtri

from marl_two_tower.config import SyntheticConfig
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.movielens import ML1M_OCCUPATIONS
from marl_two_tower.data.parsing import AGE_LABELS

AGE_BUCKETS = [1, 18, 25, 35, 45, 50, 56]
AGE_PROBS = [0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06]
FEMALE_SHARE = 0.3  # about 30% as in ML-1M
N_OCCUPATIONS = 21
N_SEGMENTS = N_OCCUPATIONS  # niche segments: one per occupation
_CANDIDATES = 4
_CHUNK_USERS = 100_000  # users per chunk (fixes the RNG streams: do not change)
_BLOCK = 1 << 20  # interaction rows per block of the candidate-affinity maths
_TOPUP_ROUNDS = 32  # redraw rounds of exact_lengths; on tiny catalogues a history may stay short
_MECHANISMS = 1  # spawn key of the mechanisms' streams (disjoint from the legacy streams)

# ML-100K: share of interactions by genre (an item with k genres counts 1/k for each),
# the 18 genres other than "unknown", sorted descending and renormalised. Produced by
# `.venv/bin/python benchmarks/synthetic_realism.py --stats-only` ("genre_shares" of
# ml-100k in benchmarks/results/synthetic_realism.json).
ML100K_GENRE_SHARES = (
    0.2461, 0.1830, 0.0962, 0.0939, 0.0810, 0.0474, 0.0471, 0.0331, 0.0323,
    0.0310, 0.0268, 0.0209, 0.0197, 0.0126, 0.0104, 0.0070, 0.0071, 0.0044,
)  # fmt: skip

# The first generator's values of the knobs that changed or were added since: with
# these, generate() reproduces its datasets bit for bit (tests/test_synthetic_parquet.py).
LEGACY: dict[str, Any] = {
    "n_users": 1500, "n_items": 1000, "interactions_per_user": 40.0, "n_genres": 12,
    "zipf_exponent": 1.0, "popularity_sigma": 0.0, "genre_affinity": 3.0, "latent_dim": 8,
    "demographic_shift": 1.0,
    "exact_lengths": False, "min_history": 5, "history_spread": 0.0, "genre_mix": "dirichlet",
    "extra_genre_prob": 0.3, "taste_drift": 0.0, "genre_drift": 0.0, "transition_prob": 0.0,
    "transition_successors": 4, "episode_length": 1.0, "niche_fraction": 0.0,
    "niche_rate": 0.0,
}  # fmt: skip


def legacy_config(**overrides: Any) -> SyntheticConfig:
    """The first generator's config (:data:`LEGACY`), with ``overrides`` applied."""
    return dataclasses.replace(SyntheticConfig(), **{**LEGACY, **overrides})


def check_config(cfg: SyntheticConfig) -> None:
    """Refuse knob values the generator cannot honour (ValueError naming the key)."""
    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"data.synthetic.{key}: expected {expected}, got {getattr(cfg, key)!r}")

    for key in ("transition_prob", "niche_rate", "niche_fraction", "extra_genre_prob"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise bad(key, "a value in [0, 1]")
    if cfg.transition_prob > 0.95:
        raise bad("transition_prob", "<= 0.95 (chains of transitions must end)")
    if cfg.episode_length < 1:
        raise bad("episode_length", "a value >= 1")
    for key in ("history_spread", "taste_drift", "genre_drift", "popularity_sigma",
                "demographic_shift"):
        if getattr(cfg, key) < 0:
            raise bad(key, "a value >= 0")
    if cfg.min_history < 1:
        raise bad("min_history", "an int >= 1")
    if cfg.transition_successors < 1:
        raise bad("transition_successors", "an int >= 1")
    if cfg.genre_mix not in ("ml-100k", "dirichlet"):
        raise bad("genre_mix", "'ml-100k' or 'dirichlet'")


def genre_profile(n_genres: int) -> np.ndarray:
    """ML-100K's sorted genre shares resampled to ``n_genres`` genres (linear
    interpolation of the share curve at the genres' mid-quantiles, renormalised)."""
    ref = np.asarray(ML100K_GENRE_SHARES)
    x_ref = (np.arange(len(ref)) + 0.5) / len(ref)
    share = np.interp((np.arange(n_genres) + 0.5) / n_genres, x_ref, ref)
    return share / share.sum()


def _stream(cfg: SyntheticConfig, key: int, first_user: int | None = None) -> np.random.Generator:
    """A mechanism's own random stream: disjoint from the legacy ``[seed]`` and
    ``[seed, first_user]`` streams, so switching a mechanism on leaves them intact."""
    entropy = cfg.seed if first_user is None else [cfg.seed, first_user]
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(_MECHANISMS, key)))


class _GenreSampler:
    """Inverse-CDF sampling of items by a weight within each requested primary genre:
    per-genre cumulative weights laid out back to back, one global searchsorted."""

    def __init__(self, primary: np.ndarray, weight: np.ndarray, n_genres: int) -> None:
        order = np.argsort(primary, kind="stable")
        self.items = order
        self.start = np.searchsorted(primary[order], np.arange(n_genres))
        self.end = np.searchsorted(primary[order], np.arange(n_genres), "right")
        self.cum = np.cumsum(weight[order])
        padded = np.concatenate([[0.0], self.cum])
        self.before = padded[self.start]
        self.total = padded[self.end] - self.before

    def draw(self, genre: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items for uniforms ``u`` in genres ``genre``; also the mask of empty genres."""
        val = self.before[genre] + u * self.total[genre]
        pos = np.searchsorted(self.cum, val, side="right")
        pos = np.clip(pos, self.start[genre], self.end[genre] - 1)
        return self.items[np.minimum(pos, len(self.items) - 1)], self.total[genre] <= 0


class _World:
    """Item side and the global parameters of one generated world."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        n_items, n_genres = cfg.n_items, cfg.n_genres
        self.cfg = cfg
        rank = rng.permutation(n_items) + 1.0
        if cfg.popularity_sigma > 0:  # lognormal curve: log w = sigma * normal quantile of the rank
            self.weight = np.exp(cfg.popularity_sigma * ndtri(1.0 - (rank - 0.5) / n_items))
        else:  # Zipf: rank^-exponent (the first generator)
            self.weight = rank ** (-cfg.zipf_exponent)
        # Unequal genre sizes: a Dirichlet (legacy) or ML-100K's genre mix. The Dirichlet
        # is drawn either way so that the rest of the world's stream is the same.
        dirichlet_share = rng.dirichlet(np.full(n_genres, 2.0))
        ml = cfg.genre_mix == "ml-100k"
        self.genre_share = genre_profile(n_genres) if ml else dirichlet_share
        self.primary = rng.choice(n_genres, size=n_items, p=self.genre_share)
        genres = np.zeros((n_items, n_genres), dtype=bool)
        genres[np.arange(n_items), self.primary] = True
        for _ in range(2):
            extra = (rng.choice(n_genres, size=n_items, p=self.genre_share) if ml
                     else rng.integers(0, n_genres, size=n_items))
            on = rng.random(n_items) < cfg.extra_genre_prob
            genres[np.flatnonzero(on), extra[on]] = True
        self.genres = genres
        self.year = (2000 - np.minimum(rng.exponential(12.0, n_items), 70)).astype(np.int32)
        self.q = rng.normal(0, 1, (n_items, cfg.latent_dim)).astype(np.float32)
        # (* 1.0 keeps the legacy shifts bit for bit)
        self.gender_shift = rng.normal(0, 1.0, (2, n_genres)) * cfg.demographic_shift
        self.age_shift = rng.normal(0, 0.7, (len(AGE_BUCKETS), n_genres)) * cfg.demographic_shift
        self.by_pop = _GenreSampler(self.primary, self.weight, n_genres)
        self.global_cum = np.cumsum(self.weight)
        # -- the mechanisms (own streams) --
        self.genre_bias = self._calibrate_bias(_stream(cfg, 0)) if ml else np.zeros(n_genres)
        self.successors = (self._successors(_stream(cfg, 1)) if cfg.transition_prob > 0
                           else np.zeros((n_items, 0), dtype=np.int64))
        self._niche(_stream(cfg, 2))

    def _calibrate_bias(self, rng: np.random.Generator, n: int = 8192, rounds: int = 60) -> np.ndarray:
        """Genre bias ``b`` with E_u[softmax(logits_u + b)] = genre mix, by fixed-point
        iteration ``b += log(target / mean)`` on a Monte-Carlo sample of users."""
        cfg = self.cfg
        gender = (rng.random(n) < FEMALE_SHARE).astype(np.int64)
        age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_PROBS)
        base = (cfg.genre_affinity * rng.normal(0, 1, (n, cfg.n_genres))
                + self.gender_shift[gender] + self.age_shift[age])
        target = self.genre_share
        bias = np.log(target)
        for _ in range(rounds):
            z = base + bias
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            bias += np.log(target / np.maximum(p.mean(0), 1e-12))
        return bias - bias.mean()

    def _successors(self, rng: np.random.Generator) -> np.ndarray:
        """``[n_items, K]`` successors of every item: the K items after it in its primary
        genre's list (the genre's items by descending base weight, wrapping around to
        the top), as a user scrolling a genre's chart picks the next item further down.
        Chained, such steps keep a consistent direction, so items several steps apart
        stay related (a genre alone in its list falls back to global draws)."""
        cfg = self.cfg
        n, k = cfg.n_items, cfg.transition_successors
        order = np.lexsort((-self.weight, self.primary))  # by genre, then most popular first
        start = np.searchsorted(self.primary[order], np.arange(cfg.n_genres))
        end = np.searchsorted(self.primary[order], np.arange(cfg.n_genres), "right")
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - start[self.primary[order]]
        size = (end - start)[self.primary]
        step = (rank[:, None] + np.arange(1, k + 1)) % size[:, None]
        succ = order[start[self.primary][:, None] + step]
        alone = succ == np.arange(n)[:, None]
        if alone.any():
            succ[alone] = self.draw_global(int(alone.sum()), rng)
        return succ

    def _niche(self, rng: np.random.Generator) -> None:
        """Niche items (least popular by base weight) and their home segments."""
        cfg = self.cfg
        n_niche = int(round(cfg.niche_fraction * cfg.n_items)) if cfg.niche_rate > 0 else 0
        niche = np.argsort(self.weight, kind="stable")[:n_niche]
        home = rng.integers(0, N_SEGMENTS, size=n_niche)  # occupations are equally common
        self.niche_items = niche
        self.niche_home = np.full(cfg.n_items, -1, dtype=np.int64)
        self.niche_home[niche] = home
        # by base weight within each segment's niche items (the tail keeps its shape)
        self.niche_sampler = _GenreSampler(home, self.weight[niche], N_SEGMENTS)
        self.niche_count = self.niche_sampler.end - self.niche_sampler.start

    def draw_in_genre(self, genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Items drawn by popularity within each requested primary genre."""
        items, empty = self.by_pop.draw(genre, rng.random(len(genre)))
        # A genre without primary items falls back to a global draw.
        if empty.any():
            items[empty] = self.draw_global(int(empty.sum()), rng)
        return items

    def draw_global(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Items drawn by popularity over the whole catalogue."""
        val = rng.random(n) * self.global_cum[-1]
        return np.minimum(np.searchsorted(self.global_cum, val, side="right"),
                          len(self.global_cum) - 1)


def _softmax_cdf(logits: np.ndarray) -> np.ndarray:
    pref = np.exp(logits - logits.max(1, keepdims=True))
    pref /= pref.sum(1, keepdims=True)
    return pref


def _user_chunk(world: _World, n: int, rng: np.random.Generator,
                first_user: int = 0) -> dict[str, np.ndarray]:
    """Demographics, tastes and drawn history lengths of ``n`` users."""
    cfg = world.cfg
    gender = (rng.random(n) < FEMALE_SHARE).astype(np.int64)  # 1 = F
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_PROBS)
    occupation = rng.integers(0, N_OCCUPATIONS, size=n)
    logits = (cfg.genre_affinity * rng.normal(0, 1, (n, cfg.n_genres))
              + world.gender_shift[gender] + world.age_shift[age])
    if cfg.genre_mix == "ml-100k":
        logits = logits + world.genre_bias
    pref = _softmax_cdf(logits)
    p_user = rng.normal(0, 1, (n, cfg.latent_dim)).astype(np.float32)
    cap = cfg.n_items // 2 + 5
    if cfg.history_spread > 0:
        # lo + LogNormal(mu, sigma) with mean interactions_per_user - lo; the minimum gives
        # way to a small mean (lo <= mean / 2), so the mean is always honoured
        sigma = cfg.history_spread
        lo = min(cfg.min_history, int(np.ceil(cfg.interactions_per_user / 2)))
        mu = np.log(max(cfg.interactions_per_user - lo, 1.0)) - sigma**2 / 2
        length = lo + np.rint(np.exp(mu + sigma * rng.normal(0, 1, n))).astype(np.int64)
    else:
        mean = max(cfg.interactions_per_user - cfg.min_history, 1.0)
        length = cfg.min_history + rng.geometric(1.0 / mean, size=n)
    length = np.minimum(length, cap)
    out = {"gender": gender, "age": age, "occupation": occupation, "pref": pref,
           "p": p_user, "length": length, "segment": occupation}
    if cfg.taste_drift > 0 or cfg.genre_drift > 0:
        drng = _stream(cfg, 10, first_user)
        move = drng.normal(0, 1, logits.shape)
        if cfg.genre_drift > 0:
            out["pref_end"] = _softmax_cdf(logits + cfg.genre_drift * move)
        out["dp"] = (cfg.taste_drift * drng.normal(0, 1, p_user.shape)).astype(np.float32)
    return out


def _genre_draw(cdf: np.ndarray, uid: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inverse-CDF genre of each interaction, #{g : cdf[uid, g] < r}, accumulated one
    genre column at a time: O(m) memory instead of an ``[m, G]`` comparison matrix."""
    genre = np.zeros(len(uid), dtype=np.int64)
    for column in np.ascontiguousarray(cdf.T):  # contiguous columns: cache-friendly gathers
        genre += column[uid] < r
    return genre


def _pick(users: dict[str, np.ndarray], world: _World, uid: np.ndarray, tau: np.ndarray | None,
          cand: np.ndarray, gumbel: np.ndarray) -> np.ndarray:
    """``cand[k, argmax_c <p_u(tau_k), q_c> + gumbel[k, c]]`` for every row k, in row
    blocks (the ``[rows, candidates, latent_dim]`` gather is the largest temporary)."""
    m = len(uid)
    best = np.empty(m, dtype=np.int64)
    for s in range(0, m, _BLOCK):
        sl = slice(s, s + _BLOCK)
        p = users["p"][uid[sl]]
        if tau is not None and "dp" in users:
            p = p + tau[sl, None].astype(np.float32) * users["dp"][uid[sl]]
        affinity = np.einsum("md,mcd->mc", p, world.q[cand[sl]])
        best[sl] = np.argmax(affinity + gumbel[sl], axis=1)
    return cand[np.arange(m), best]


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return -np.log(-np.log(rng.random(shape) + 1e-12) + 1e-12)


def _draw_items(world: _World, users: dict[str, np.ndarray], uid: np.ndarray,
                rng: np.random.Generator, tau: np.ndarray | None = None,
                mrng: np.random.Generator | None = None) -> np.ndarray:
    """Base draw of one item per slot of user ``uid[k]`` at relative history position
    ``tau[k]`` (genre, candidates, latent + Gumbel pick)."""
    cfg = world.cfg
    m = len(uid)
    p_genre = 1.0 - 1.0 / (1.0 + cfg.genre_affinity)
    personal = rng.random(m) < p_genre
    r = rng.random(m)
    genre = _genre_draw(np.cumsum(users["pref"], axis=1), uid, r)
    if "pref_end" in users and tau is not None and mrng is not None:
        # drift: the genre comes from the end-of-history taste with probability tau
        late = mrng.random(m) < tau
        genre = np.where(late, _genre_draw(np.cumsum(users["pref_end"], axis=1), uid, r), genre)
    genre = np.minimum(genre, cfg.n_genres - 1)
    cand = np.empty((m, _CANDIDATES), dtype=np.int64)
    for c in range(_CANDIDATES):
        cand[:, c] = np.where(personal, world.draw_in_genre(genre, rng),
                              world.draw_global(m, rng))
    gumbel = _gumbel(rng, (m, _CANDIDATES))
    return _pick(users, world, uid, tau, cand, gumbel)


def _niche_draws(world: _World, users: dict[str, np.ndarray], uid: np.ndarray, tau: np.ndarray,
                 item: np.ndarray, rng: np.random.Generator) -> None:
    """Replace, with probability ``niche_rate``, a slot's item by a niche item of the
    user's segment (4 uniform candidates among them, latent + Gumbel pick); in place."""
    if not len(world.niche_items):
        return
    seg = users["segment"][uid]
    count = world.niche_count[seg]
    on = np.flatnonzero((rng.random(len(uid)) < world.cfg.niche_rate) & (count > 0))
    if not len(on):
        return
    cand = np.empty((len(on), _CANDIDATES), dtype=np.int64)
    for c in range(_CANDIDATES):
        cand[:, c] = world.niche_items[world.niche_sampler.draw(seg[on], rng.random(len(on)))[0]]
    item[on] = _pick(users, world, uid[on], tau[on], cand, _gumbel(rng, cand.shape))


def _transitions(world: _World, users: dict[str, np.ndarray], uid: np.ndarray, tau: np.ndarray,
                 first: np.ndarray, prev_item: np.ndarray, item: np.ndarray,
                 rng: np.random.Generator) -> None:
    """With probability ``transition_prob`` a slot takes a successor of the episode's
    cursor (latent + Gumbel pick among the successors); in place.

    Episodes: every slot begins one with probability ``1 / episode_length``, and so
    does the first slot of a history. The cursor is the episode's first item, then
    its latest transition: an episode walks down a genre chart while its other draws
    come and go (``episode_length = 1``: every slot begins an episode, so a transition
    follows the previous item). Slots are user-major and time-ordered; ``first`` marks the first slot of
    each user's run of slots, and ``prev_item[uid]`` (-1 = none) is the item just
    before it (the top-ups of exact lengths continue a history from its last item,
    which then plays the episode's first item). A transition whose source is itself a
    transition is resolved after it: level by level (depth = transitions along the
    chain of sources), every level one vectorised step.
    """
    cfg = world.cfg
    m = len(uid)
    idx = np.arange(m)
    trans = rng.random(m) < cfg.transition_prob
    has_prev = prev_item[uid] >= 0
    begins = (rng.random(m) < 1.0 / cfg.episode_length) | (first & ~has_prev)
    start = np.maximum.accumulate(np.where(first, idx, 0))
    # the episode's cursor: its first item, then each transition in turn (the other
    # draws of the episode do not move it)
    cursor = trans | begins
    last_cursor = np.maximum.accumulate(np.where(cursor, idx, -1))
    src = np.r_[-1, last_cursor[:-1]]  # the last cursor slot strictly before k
    virtual = src < start  # none in this run of slots: the item before it, if any
    trans &= ~(virtual & ~has_prev)
    if not trans.any():
        return
    depth = trans.astype(np.int64)
    while True:  # depth of a transition = 1 + depth of its source (max chain length rounds)
        new = np.where(trans, 1 + np.where(virtual, 0, depth[np.maximum(src, 0)]), 0)
        if np.array_equal(new, depth):
            break
        depth = new
    order = np.flatnonzero(trans)
    order = order[np.argsort(depth[order], kind="stable")]
    bounds = np.searchsorted(depth[order], np.arange(1, depth.max() + 2))
    gumbel = _gumbel(rng, (len(order), world.successors.shape[1]))
    for d in range(len(bounds) - 1):
        ks = order[bounds[d] : bounds[d + 1]]
        before = np.where(virtual[ks], prev_item[uid[ks]], item[np.maximum(src[ks], 0)])
        cand = world.successors[before]
        item[ks] = _pick(users, world, uid[ks], tau[ks], cand, gumbel[bounds[d] : bounds[d + 1]])


def _draw_slots(world: _World, users: dict[str, np.ndarray], length: np.ndarray,
                tau_of: str, prev_item: np.ndarray, rng: np.random.Generator,
                mrng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``length[u]`` consecutive slots per user: (uid, item) in user-major time order.

    ``tau_of='history'``: slot j of a user sits at relative position j / (length - 1);
    ``'end'``: every slot at position 1 (the exact-length top-ups, appended at the end).
    """
    cfg = world.cfg
    n = len(length)
    uid = np.repeat(np.arange(n), length)
    legacy = cfg.taste_drift == 0 and cfg.niche_rate == 0 and cfg.transition_prob == 0
    if legacy:  # the first generator's stream, untouched
        return uid, _draw_items(world, users, uid, rng)
    offsets = np.concatenate([[0], np.cumsum(length)[:-1]])
    first = np.zeros(len(uid), dtype=bool)
    first[offsets[length > 0]] = True
    if tau_of == "end":
        tau = np.ones(len(uid))
    else:
        pos = np.arange(len(uid)) - np.repeat(offsets, length)
        tau = pos / np.maximum(np.repeat(length, length) - 1, 1)
    item = _draw_items(world, users, uid, rng, tau, mrng)
    if cfg.niche_rate > 0:
        _niche_draws(world, users, uid, tau, item, mrng)
    if cfg.transition_prob > 0:
        _transitions(world, users, uid, tau, first, prev_item, item, mrng)
    return uid, item


def _timestamps(length: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-slot timestamps (user-major order): a start in a two-year window plus
    exponential gaps, so each user's timestamps increase."""
    n, m = len(length), int(length.sum())
    uid = np.repeat(np.arange(n), length)
    start = rng.uniform(8.8e8, 8.8e8 + 6.3e7, size=n)
    gaps = rng.exponential(86400.0, size=m)
    csum = np.cumsum(gaps)
    offsets = np.concatenate([[0], np.cumsum(length)[:-1]])
    return start[uid] + csum - np.repeat(csum[offsets] - gaps[offsets], length)


def _first_occurrence(uid: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Indices of the first draw of every distinct (user, item) pair, in draw order."""
    _, first = np.unique(uid * n_items + item, return_index=True)
    first.sort()
    return first


def _interaction_chunk(world: _World, users: dict[str, np.ndarray], first_user: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    cfg = world.cfg
    length = users["length"]
    n = len(length)
    mrng = _stream(cfg, 11, first_user)
    none = np.full(n, -1, dtype=np.int64)
    uid, item = _draw_slots(world, users, length, "history", none, rng, mrng)
    if not cfg.exact_lengths:
        ts = _timestamps(length, rng)
        # One interaction per (user, item): keep the first occurrence.
        first = _first_occurrence(uid, item, cfg.n_items)
        return uid[first] + first_user, item[first], ts[first]
    # Exact lengths: repeated (user, item) draws are redrawn (earlier draws win), so a
    # history is a sample without replacement from the user's preference process.
    first = _first_occurrence(uid, item, cfg.n_items)
    uid, item = uid[first], item[first]
    order = np.argsort(uid, kind="stable")  # user-major; within a user, draw order = time
    uid, item = uid[order], item[order]
    for r in range(_TOPUP_ROUNDS):
        short = length - np.bincount(uid, minlength=n)
        if not short.any():
            break
        # the walk continues from each user's last kept item; later rounds over-draw
        # (x2 per round, up to x16: a heavy user's last free items can be rare draws)
        # and the surplus beyond the drawn length is cut, earliest draws kept
        start = np.searchsorted(uid, np.arange(n))
        ends = np.searchsorted(uid, np.arange(n), side="right")
        last = np.where(ends > start, item[np.maximum(ends - 1, 0)], -1)
        new_uid, new_item = _draw_slots(world, users, short * min(2**r, 16), "end", last, rng, mrng)
        uid = np.concatenate([uid, new_uid])
        item = np.concatenate([item, new_item])
        order = np.argsort(uid, kind="stable")
        uid, item = uid[order], item[order]
        first = _first_occurrence(uid, item, cfg.n_items)
        uid, item = uid[first], item[first]
        rank = np.arange(len(uid)) - np.searchsorted(uid, uid)
        keep = rank < length[uid]
        uid, item = uid[keep], item[keep]
    ts = _timestamps(np.bincount(uid, minlength=n), rng)
    return uid + first_user, item, ts


def iter_chunks(cfg: SyntheticConfig, chunk_users: int = _CHUNK_USERS) -> Iterator[dict]:
    """Yield the generated data chunk by chunk (bounded memory for huge configs).

    Each chunk is a dict with ``users, items, timestamps`` (interactions) and
    ``gender, age, occupation`` (demographics of the chunk's users). The world (item
    side) is yielded first as ``{"world": _World}``.
    """
    check_config(cfg)
    rng = np.random.default_rng(cfg.seed)
    world = _World(cfg, rng)
    yield {"world": world}
    for start in range(0, cfg.n_users, chunk_users):
        n = min(chunk_users, cfg.n_users - start)
        crng = np.random.default_rng([cfg.seed, start])
        users = _user_chunk(world, n, crng, start)
        u, i, t = _interaction_chunk(world, users, start, crng)
        yield {"users": u, "items": i, "timestamps": t, "gender": users["gender"],
               "age": users["age"], "occupation": users["occupation"]}


def generate_name(cfg: SyntheticConfig) -> str:
    """Dataset name of a config (the fingerprint hashes it with the arrays)."""
    return f"synthetic-{cfg.n_users}x{cfg.n_items}-s{cfg.seed}" + ("-exact" if cfg.exact_lengths else "")


def generate_with_world(cfg: SyntheticConfig) -> tuple[Dataset, _World]:
    """:func:`generate` plus the world it drew (successors, niche items and their home
    segments, genre mix): what the tests and the realism benchmark check against."""
    chunks = iter_chunks(cfg)
    world: _World = next(chunks)["world"]
    parts = list(chunks)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # Items that nobody interacted with still belong to the catalogue (zeros count).
    ds = Dataset(
        name=generate_name(cfg),
        users=cat["users"],
        items=cat["items"],
        timestamps=cat["timestamps"],
        n_users=cfg.n_users,
        n_items=cfg.n_items,
        user_ids=np.arange(1, cfg.n_users + 1),
        item_ids=np.arange(1, cfg.n_items + 1),
        item_genres=world.genres,
        genre_names=[f"genre_{g:02d}" for g in range(cfg.n_genres)],
        item_year=world.year,
        user_features={"gender": cat["gender"], "age": cat["age"],
                       "occupation": cat["occupation"]},
        # the ML-1M code books: readable group labels in reports (same codes as ML-1M)
        user_feature_labels={"gender": ["M", "F"], "age": list(AGE_LABELS),
                             "occupation": list(ML1M_OCCUPATIONS)},
    )
    return ds, world


def generate(cfg: SyntheticConfig) -> Dataset:
    """Generate the whole synthetic dataset in memory (see module docstring)."""
    return generate_with_world(cfg)[0]
