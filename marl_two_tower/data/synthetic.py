"""Deterministic synthetic MovieLens-like data: the embedded, offline default.

Planted structure (so tests can check that models recover it):

* **Popularity.** Item base weight w_i = rank_i^(-zipf_exponent) over a random
  permutation of items (a Zipf-like long tail).
* **Genres.** Each item has one primary genre and, with probability 0.3 each, up to
  two secondary genres; genres have unequal sizes. Release years skew recent.
* **Demographics.** Gender, age bucket (the ML-1M buckets) and occupation; gender
  and age shift the genre preferences, so group fairness metrics have something
  to measure.
* **Preferences.** User u has genre logits
  ``genre_affinity * N(0, 1) + shift(gender) + shift(age)``; each interaction picks
  a genre g ~ softmax(logits) with probability ``1 - 1/(1 + genre_affinity)``, else
  falls back to global popularity. Within the genre, 4 candidates are drawn by
  popularity and the one maximising ``<p_u, q_i> + Gumbel`` wins (latent factors
  p_u, q_i in R^latent_dim), which plants collaborative structure beyond genres.
* **Time.** Per-user start times and exponential gaps give increasing timestamps.
* **Lengths.** A history has length 5 + Geometric(1 / (interactions_per_user - 5)).
  A repeated (user, item) draw keeps its first occurrence only, so histories come
  out shorter than drawn (about 25% at 100k items); with ``exact_lengths`` the
  repeats are redrawn (earlier draws win, up to ``_TOPUP_ROUNDS`` rounds), so a
  history is a sample without replacement of the drawn length and the mean is
  ``interactions_per_user``.

Generation is vectorised and processed in chunks of 100k users (each with its own
random stream, seeded by (seed, first user)), and inside a chunk the per-interaction
maths is O(interactions) memory (genre draws one genre column at a time, the
candidate affinities in row blocks), so memory is bounded by one chunk whatever the
number of users: 1M users x 55 interactions streams to Parquet with < 1 GB
(:mod:`marl_two_tower.data.synthetic_parquet`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from marl_two_tower.config import SyntheticConfig
from marl_two_tower.data.dataset import Dataset
from marl_two_tower.data.movielens import ML1M_OCCUPATIONS
from marl_two_tower.data.parsing import AGE_LABELS

AGE_BUCKETS = [1, 18, 25, 35, 45, 50, 56]
N_OCCUPATIONS = 21
_CANDIDATES = 4
_CHUNK_USERS = 100_000  # users per chunk (fixes the RNG streams: do not change)
_BLOCK = 1 << 20  # interaction rows per block of the candidate-affinity maths
_TOPUP_ROUNDS = 32  # redraw rounds of exact_lengths; on tiny catalogues a history may stay short


class _World:
    """Item side and the global parameters of one generated world."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator) -> None:
        n_items, n_genres = cfg.n_items, cfg.n_genres
        self.cfg = cfg
        self.weight = (rng.permutation(n_items) + 1.0) ** (-cfg.zipf_exponent)
        # Unequal genre sizes: primary genre drawn from a Dirichlet over genres.
        genre_share = rng.dirichlet(np.full(n_genres, 2.0))
        self.primary = rng.choice(n_genres, size=n_items, p=genre_share)
        genres = np.zeros((n_items, n_genres), dtype=bool)
        genres[np.arange(n_items), self.primary] = True
        for _ in range(2):
            extra = rng.integers(0, n_genres, size=n_items)
            on = rng.random(n_items) < 0.3
            genres[np.flatnonzero(on), extra[on]] = True
        self.genres = genres
        self.year = (2000 - np.minimum(rng.exponential(12.0, n_items), 70)).astype(np.int32)
        self.q = rng.normal(0, 1, (n_items, cfg.latent_dim)).astype(np.float32)
        self.gender_shift = rng.normal(0, 1.0, (2, n_genres))
        self.age_shift = rng.normal(0, 0.7, (len(AGE_BUCKETS), n_genres))
        # Per-genre cumulative popularity over items of that primary genre, laid out
        # back to back so one global searchsorted serves every genre.
        order = np.argsort(self.primary, kind="stable")
        self.genre_items = order
        self.genre_start = np.searchsorted(self.primary[order], np.arange(n_genres))
        self.genre_end = np.searchsorted(self.primary[order], np.arange(n_genres), "right")
        self.cum = np.cumsum(self.weight[order])
        self.cum_before = np.concatenate([[0.0], self.cum])[self.genre_start]
        self.genre_total = np.concatenate([[0.0], self.cum])[self.genre_end] - self.cum_before
        self.global_cum = np.cumsum(self.weight)

    def draw_in_genre(self, genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Items drawn by popularity within each requested primary genre."""
        tot = self.genre_total[genre]
        val = self.cum_before[genre] + rng.random(len(genre)) * tot
        pos = np.searchsorted(self.cum, val, side="right")
        pos = np.clip(pos, self.genre_start[genre], self.genre_end[genre] - 1)
        # A genre without primary items falls back to a global draw.
        empty = tot <= 0
        items = self.genre_items[np.minimum(pos, len(self.genre_items) - 1)]
        if empty.any():
            items[empty] = self.draw_global(int(empty.sum()), rng)
        return items

    def draw_global(self, n: int, rng: np.random.Generator) -> np.ndarray:
        val = rng.random(n) * self.global_cum[-1]
        return np.minimum(np.searchsorted(self.global_cum, val, side="right"),
                          len(self.global_cum) - 1)


def _user_chunk(world: _World, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg = world.cfg
    gender = (rng.random(n) < 0.3).astype(np.int64)  # 1 = F, about 30% as in ML-1M
    age = rng.choice(len(AGE_BUCKETS), size=n, p=[0.04, 0.18, 0.35, 0.2, 0.09, 0.08, 0.06])
    occupation = rng.integers(0, N_OCCUPATIONS, size=n)
    logits = (cfg.genre_affinity * rng.normal(0, 1, (n, cfg.n_genres))
              + world.gender_shift[gender] + world.age_shift[age])
    pref = np.exp(logits - logits.max(1, keepdims=True))
    pref /= pref.sum(1, keepdims=True)
    p_user = rng.normal(0, 1, (n, cfg.latent_dim)).astype(np.float32)
    # History lengths: at least 5, mean about interactions_per_user, long right tail.
    mean = max(cfg.interactions_per_user - 5.0, 1.0)
    length = 5 + rng.geometric(1.0 / mean, size=n)
    length = np.minimum(length, cfg.n_items // 2 + 5)
    return {"gender": gender, "age": age, "occupation": occupation, "pref": pref,
            "p": p_user, "length": length}


def _genre_draw(cdf: np.ndarray, uid: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inverse-CDF genre of each interaction, #{g : cdf[uid, g] < r}, accumulated one
    genre column at a time: O(m) memory instead of an ``[m, G]`` comparison matrix."""
    genre = np.zeros(len(uid), dtype=np.int64)
    for column in np.ascontiguousarray(cdf.T):  # contiguous columns: cache-friendly gathers
        genre += column[uid] < r
    return genre


def _draw_items(world: _World, users: dict[str, np.ndarray], uid: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """One item per interaction slot of user ``uid[k]`` (genre, candidates, Gumbel pick)."""
    cfg = world.cfg
    m = len(uid)
    p_genre = 1.0 - 1.0 / (1.0 + cfg.genre_affinity)
    personal = rng.random(m) < p_genre
    genre = np.minimum(_genre_draw(np.cumsum(users["pref"], axis=1), uid, rng.random(m)),
                       cfg.n_genres - 1)
    cand = np.empty((m, _CANDIDATES), dtype=np.int64)
    for c in range(_CANDIDATES):
        cand[:, c] = np.where(personal, world.draw_in_genre(genre, rng),
                              world.draw_global(m, rng))
    gumbel = -np.log(-np.log(rng.random((m, _CANDIDATES)) + 1e-12) + 1e-12)
    best = np.empty(m, dtype=np.int64)
    # <p_u, q_i> in row blocks: the [rows, candidates, latent_dim] gather is the largest
    # temporary of the generator, so blocking bounds memory (per-row results unchanged).
    for s in range(0, m, _BLOCK):
        sl = slice(s, s + _BLOCK)
        affinity = np.einsum("md,mcd->mc", users["p"][uid[sl]], world.q[cand[sl]])
        best[sl] = np.argmax(affinity + gumbel[sl], axis=1)
    return cand[np.arange(m), best]


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
    uid = np.repeat(np.arange(n), length)
    item = _draw_items(world, users, uid, rng)
    if not cfg.exact_lengths:
        ts = _timestamps(length, rng)
        # One interaction per (user, item): keep the first occurrence.
        first = _first_occurrence(uid, item, cfg.n_items)
        return uid[first] + first_user, item[first], ts[first]
    # Exact lengths: repeated (user, item) draws are redrawn (earlier draws win), so a
    # history is a sample without replacement from the user's preference process.
    first = _first_occurrence(uid, item, cfg.n_items)
    uid, item = uid[first], item[first]
    for _ in range(_TOPUP_ROUNDS):
        short = length - np.bincount(uid, minlength=n)
        if not short.any():
            break
        new_uid = np.repeat(np.arange(n), short)
        uid = np.concatenate([uid, new_uid])
        item = np.concatenate([item, _draw_items(world, users, new_uid, rng)])
        first = _first_occurrence(uid, item, cfg.n_items)
        uid, item = uid[first], item[first]
    order = np.argsort(uid, kind="stable")  # user-major; within a user, draw order = time
    uid, item = uid[order], item[order]
    ts = _timestamps(np.bincount(uid, minlength=n), rng)
    return uid + first_user, item, ts


def iter_chunks(cfg: SyntheticConfig, chunk_users: int = _CHUNK_USERS) -> Iterator[dict]:
    """Yield the generated data chunk by chunk (bounded memory for huge configs).

    Each chunk is a dict with ``users, items, timestamps`` (interactions) and
    ``gender, age, occupation`` (demographics of the chunk's users). The world (item
    side) is yielded first as ``{"world": _World}``.
    """
    rng = np.random.default_rng(cfg.seed)
    world = _World(cfg, rng)
    yield {"world": world}
    for start in range(0, cfg.n_users, chunk_users):
        n = min(chunk_users, cfg.n_users - start)
        crng = np.random.default_rng([cfg.seed, start])
        users = _user_chunk(world, n, crng)
        u, i, t = _interaction_chunk(world, users, start, crng)
        yield {"users": u, "items": i, "timestamps": t, "gender": users["gender"],
               "age": users["age"], "occupation": users["occupation"]}


def generate_name(cfg: SyntheticConfig) -> str:
    """Dataset name of a config (the fingerprint hashes it with the arrays)."""
    return f"synthetic-{cfg.n_users}x{cfg.n_items}-s{cfg.seed}" + ("-exact" if cfg.exact_lengths else "")


def generate(cfg: SyntheticConfig) -> Dataset:
    """Generate the whole synthetic dataset in memory (see module docstring)."""
    chunks = iter_chunks(cfg)
    world: _World = next(chunks)["world"]
    parts = list(chunks)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # Items that nobody interacted with still belong to the catalogue (zeros count).
    return Dataset(
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
