"""Typed, validated configuration.

Config is data: every field lives in one dataclass below with its default and a
docstring-style comment; YAML files and ``--set key=value`` only override. Loading
rejects unknown keys and wrong types with an error that names the full key
(``train.lr: expected float, got 'abc'``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from marl_two_tower.errors import UserError


def find_config_dir() -> Path:
    """Where the shipped YAML configs (``base.yaml``, ``ablation.yaml``, ...) are.

    An installed wheel carries them as package data, ``marl_two_tower/configs/``
    (setup.py maps the repository's top-level ``configs/`` there), found with
    :mod:`importlib.resources`; a source checkout or editable install has no such
    folder and reads the top-level ``configs/`` beside the package.
    """
    installed = importlib.resources.files("marl_two_tower") / "configs"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = find_config_dir()


class ConfigError(UserError, ValueError):
    """A config value or key is invalid; the message names the key."""


@dataclass
class SyntheticConfig:
    """Parameters of the embedded MovieLens-like generator (see data/synthetic.py).

    The structure knobs (popularity curve, lengths, genre mix, drift, transitions,
    niche items) default to values calibrated to ML-100K by
    ``benchmarks/synthetic_realism.py --fit``; ``synthetic.legacy_config()`` gives the
    first generator's values (what each mechanism does and the real statistic behind
    it: docs/data.md).
    """

    # the default world's size: ML-100K's interactions per item (~56) and density (~7%)
    # with 38k interactions (the first generator's default gave 34k), so the demo stays
    # fast; ML-100K itself is 943 x 1682 x 106 (benchmarks/synthetic_realism.py)
    n_users: int = 800  # number of users
    n_items: int = 700  # number of items
    interactions_per_user: float = 50.0  # mean history length
    n_genres: int = 18  # genres (items are multi-genre); ML-100K has 18 (+ "unknown")
    # item popularity curve: > 0 = lognormal, log w = sigma * (normal quantile of the
    # item's random rank) (ML-100K's flat head and long tail); 0 = Zipf, w ~ rank^-zipf_exponent
    popularity_sigma: float = 2.6
    zipf_exponent: float = 1.0  # Zipf exponent (used when popularity_sigma = 0)
    genre_affinity: float = 3.0  # strength of planted per-user genre preferences
    # scale of the genre-preference shifts by gender and age (demographic signal)
    demographic_shift: float = 2.5
    latent_dim: int = 8  # dimension of planted latent preference factors
    seed: int = 7  # generator seed (independent of the training seed)
    # redraw repeated (user, item) draws so every history has its drawn length (mean =
    # interactions_per_user); False keeps only first occurrences (shorter histories,
    # the datasets of earlier versions bit for bit)
    exact_lengths: bool = True
    # shortest history (ML-100K: 20, MovieLens kept users with >= 20 ratings); gives way
    # to a small mean: the minimum used is min(min_history, ceil(interactions_per_user/2))
    min_history: int = 20
    # log-sd of the lognormal history length above the minimum (right tail of heavy
    # users); 0 = the first generator's min_history + geometric lengths
    history_spread: float = 1.1
    # genre sizes: "ml-100k" = ML-100K's genre shares of interactions (resampled to
    # n_genres), "dirichlet" = random unequal sizes (the first generator)
    genre_mix: Literal["ml-100k", "dirichlet"] = "ml-100k"
    extra_genre_prob: float = 0.45  # probability of each of two secondary genres per item
    # taste drift over a history: sd of the change of the latent factors (taste_drift)
    # and of the genre logits (genre_drift) from a history's start to its end (0 = none)
    taste_drift: float = 3.0
    genre_drift: float = 0.0
    # probability that an interaction is one of the previous item's successors (a
    # sparse next-item kernel over related items; 0 = order carries no signal)
    transition_prob: float = 0.1
    # successors per item: the next items in its genre's chart (a "page" to pick from)
    transition_successors: int = 4
    # mean length (in items) of a history's episodes: a transition follows the episode's
    # cursor (its first item, then its latest transition), so an episode walks down a
    # genre chart, like a rating session in MovieLens; 1 = the previous item
    episode_length: float = 100.0
    # share of the catalogue (least popular by base weight) that are niche items, each
    # with a home segment (an occupation); 0 = none
    niche_fraction: float = 0.8
    # probability that an interaction is a niche item of the user's own segment
    niche_rate: float = 0.02


@dataclass
class DataConfig:
    """Which data to load, and how to split and group it (DESIGN §2)."""

    # synthetic | ml-100k | ml-1m | ml-1m-ncf | ml-1m-ordered | csv | parquet
    # (ml-1m-ordered: complete ML-1M in SASRec's time order, split by its seq column)
    source: str = "synthetic"
    path: str = ""  # folder (MovieLens) or file (csv/parquet); "" = default location
    items_path: str = ""  # generic tables: optional item table (item, genres "a|b", year)
    users_path: str = ""  # generic tables: optional user table (user, categorical cols)
    min_rating: float = 0.0  # keep ratings >= this; 0 keeps every rating (implicit)
    # drop items with fewer interactions than this (counted over all users, after
    # min_rating) and re-index; 5 = SASRec's ML-1M preprocessing (Kang & McAuley 2018:
    # ml-1m + min_item_count=5 gives the split of ml-1m-ordered); 0 = off
    min_item_count: int = 0
    tail_fraction: float = 0.2  # tail = least-popular items holding this share
    tail_by: Literal["interactions", "items"] = "interactions"  # what the share counts
    # repeated (user, item) pairs: drop = keep each pair's first interaction in time
    # order before the split (no target is then an item the user has in train);
    # keep = split every interaction (a re-consumed target is masked like any train
    # item, so it counts as a miss). docs/metrics.md "Repeats"
    repeats: Literal["drop", "keep"] = "drop"
    # accepted ratings [lo, hi]: a rating outside (or inf) is an error naming file:line;
    # [] = the source's scale: MovieLens 1..5, csv/parquet any finite number
    rating_range: list[float] = field(default_factory=list)
    # ratings of items missing from the item table (movies.dat, u.item, items_path):
    # keep (no genres, year 0, title "") or drop; either way a warning gives their count
    # and first line (ml-1m-ncf: train rows only, the test protocol is kept as given)
    unknown_items: Literal["keep", "drop"] = "keep"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    """Two-tower architecture (DESIGN §3 item tower and base user tower)."""

    dim: int = 64  # output embedding size d
    id_dim: int = 64  # id embedding size
    hidden: int = 128  # MLP hidden width
    # N most recent train items the user tower reads (mean-pooled, or the transformer's
    # window: its max length, SASRec's 200 on ML-1M)
    history_len: int = 50
    dropout: float = 0.0  # dropout inside the tower MLPs
    normalize: bool = True  # L2-normalise tower outputs and learn a temperature
    init_temperature: float = 0.1  # initial softmax temperature when normalising
    year_buckets: int = 12  # release-year buckets in the item tower
    # how the user tower encodes the history h_u: "pooled" = mean of the items' id
    # embeddings (order-blind); "transformer" = SASRec causal self-attention (Kang &
    # McAuley 2018; model/sequence.py) over the history in time order, output at the last
    # position, trained on every position (sequence batches, model/sequence_training.py)
    user_encoder: Literal["pooled", "transformer"] = "transformer"
    # the user's own features x_u fused with the encoded history: "all" = id embedding +
    # one embedding per demographic feature; "demographics" = without the id embedding;
    # "id" = without demographics; "none" = the history alone (SASRec's user). A per-user
    # id embedding memorises a user's whole-history taste, which helps on long stable
    # histories and overfits short drifting ones (the demo's data: docs/data.md)
    user_features: Literal["all", "demographics", "id", "none"] = "all"
    n_blocks: int = 2  # transformer: self-attention blocks (SASRec: 2)
    n_heads: int = 1  # transformer: attention heads, must divide id_dim (SASRec: 1)
    seq_dropout: float = 0.2  # transformer: dropout of embeddings, attention and FFN (SASRec ML-1M: 0.2)
    ffn_dim: int = 0  # transformer: hidden width of the blocks' FFN (0 = id_dim, SASRec's; RecBole: 4 d)
    # transformer: dropout of the attention weights (< 0: seq_dropout, SASRec's). It is
    # the costliest dropout on CPU, one draw per (query, key) pair: 0 makes the ML-1M
    # step 11% cheaper (docs/sequence_tower.md, "Training on every position")
    attn_dropout: float = -1.0
    # transformer: which train positions an epoch trains on. "window" = the last
    # history_len of each user (SASRec's sampler); "all" = every train interaction, a
    # long history cut into consecutive history_len blocks counted back from its end,
    # each block's rows reading the items before them inside the block's input window
    # (the block shifted back one item: SASRec's truncation, block by block). On ML-1M
    # "window" leaves out a third of the train interactions (652k of 988k at 200)
    train_positions: Literal["window", "all"] = "window"
    # train against every item of the catalogue (full-softmax CE, no logQ needed) when
    # n_items <= this; larger catalogues keep the sampled softmax (in-batch +
    # train.num_negatives, logQ); 0 = always sampled (Klenitskiy & Vasilev 2023: CE over
    # the catalogue >> sampled/BCE for sequential models)
    full_softmax_max_items: int = 20_000
    # the full-softmax CE's three matmuls (logits, dL/dh, dL/dE) in bfloat16, the softmax
    # statistics, gradients and towers in fp32 (train.mixed_precision=bf16 autocasts the
    # towers too). On a CPU with AMX-BF16 the matmuls run 4-6x faster (docs/speed.md,
    # "The full-softmax CE in bfloat16"); the logits then carry bf16's ~0.4% rounding
    full_softmax_bf16: bool = False


@dataclass
class FairSamplerConfig:
    """Fair Sampler: popularity-debiased positives (DESIGN §3)."""

    enabled: bool = False
    # interaction (u, i) drawn ~ pop(i)^-beta, so item j ~ pop(j)^(1-beta); 0 = uniform.
    # 0.1: the largest fairness gain within one seed-std of base validation NDCG@10 on
    # ML-100K (docs/fairness_components.md)
    beta: float = 0.1
    max_per_batch: int = 4  # cap on how often one item may appear as a positive per batch


@dataclass
class BUHSConfig:
    """Biased User History Synthesis (Balasubramanian et al., RecSys 2024)."""

    enabled: bool = False
    fanout: int = 15  # items sampled from the user's train history
    temperature: float = 0.01  # T in p(i) ~ exp((1/deg(i) - max 1/deg)/T)
    synthesis: Literal["attention", "mean", "gru"] = "attention"
    inference_seed: int = 0  # fixed seed used at inference for reproducible lists
    # which history a training row (u, t) samples from: "all" = the whole train history
    # but t (the items after t too), "prefix" = u's items before t (what the transformer
    # tower reads; needs it). "all" kept on ML-100K validation over 3 seeds (NDCG@10
    # 0.1233 vs 0.1167; prefix: lower Gini at equal HR further down the frontier): docs/buhs.md
    history: Literal["all", "prefix"] = "all"


@dataclass
class GiniConfig:
    """GINI agent: differentiable exposure Gini with dual-ascent weight (DESIGN §3)."""

    enabled: bool = False
    # softmax temperature of soft exposure on top of the model's scores (which already
    # carry the learned inverse temperature); 1 = the model's own softmax (docs/gini_agent.md)
    tau: float = 1.0
    # target Gini of the soft exposure for the dual-ascent controller; 0.3 chosen on ML-100K
    # validation over {0.5, 0.4, 0.3} (docs/gini_agent.md)
    target: float = 0.3
    lr_dual: float = 0.01  # dual ascent step size of lambda_fair
    init_lambda: float = 1.0  # initial lambda_fair (multiplies l_fair)
    n_candidates: int = 0  # 0 = all items; >0 = sampled candidate set of this size
    mask_seen: bool = True  # leave each user's train items out of its soft exposure
    # the exposure budget's parameters (fairness/exposure.py; applied when
    # exposure_budget.enabled, independently of gini.enabled): every item enters at most
    # ceil(exposure_cap * cap_k * U / N) of the U users' top-K lists; 0 = off. 6 = the
    # tightest cap within 5% of the unconstrained validation NDCG@10 on ML-100K
    # (docs/gini_agent.md, benchmarks/exposure_budget_ml100k.py)
    exposure_cap: float = 6.0
    cap_k: int = 10  # list length the fair share K * U / N is measured at
    cap_candidates: int = 1000  # best unmasked items per user the allocation chooses from
    # coverage floor: each user may give up to this many top-K slots to items no list
    # holds (validation Coverage@10 0.74 -> 0.98 at -0.001 NDCG@10 on ML-100K)
    cover_floor: int = 1


@dataclass
class ExposureBudgetConfig:
    """Exposure budget: the evaluation-time joint allocation of fairness/exposure.py.

    Its own switch, independent of the GINI training loss (``gini.enabled``): the
    budget re-allocates the lists of a trained model and trains nothing, so the
    ablation can tell the loss and the allocation apart (docs/gini_agent.md). Its
    parameters are ``gini.exposure_cap``, ``gini.cap_k``, ``gini.cap_candidates`` and
    ``gini.cover_floor`` (kept there so that every existing config reads as before).
    A stored config that predates this section (it has ``gini.exposure_cap`` but no
    ``exposure_budget``) reads with ``enabled = gini.enabled``, its old meaning
    (:func:`config_from_dict`). Never part of a checkpoint's fingerprint.
    """

    enabled: bool = False  # allocate the evaluated top-K lists under the budget


@dataclass
class TailLossConfig:
    """L_Tail: recommendation loss on tail positives only (DESIGN §4)."""

    enabled: bool = False
    # the candidates of a tail row's softmax: "all" = the rows' own L_rec (tail rows
    # up-weighted), "tail" = the tail items only (how well u's tail item is ranked
    # among the tail: what the exposure budget draws on): docs/fairness_components.md
    candidates: Literal["all", "tail"] = "all"


@dataclass
class ContextGNNConfig:
    """ContextGNN graph context and familiar-item pair-wise head (Yuan et al., 2024).

    Defaults are the validation optimum on ML-100K (docs/context_gnn.md): the temporal
    graph context on, the familiar head off (it lowered validation NDCG@10 there).
    """

    enabled: bool = False
    layers: int = 2  # LightGCN propagation layers of c_u (1..3)
    fanout: int = 20  # users sampled per item at hop 2 (and items at hop 1 when recent=0)
    familiar_size: int = 50  # bounded size of the familiar item set per user
    recent: int = 5  # >0: hop 1 = the root's latest `recent` items (temporal); 0: uniform sample
    item_neighbours: int = 100  # links kept per item in the two-hop item operator (hop 3)
    context: bool = True  # fuse the graph context c_u into the user tower (gated sum)
    familiar: bool = False  # pair-wise logits replace the two-tower logit on familiar items
    residual: bool = False  # the pair-wise logit also takes the two-tower dot product as input
    # how familiar logits enter the sampled softmax: in place of the sampled candidates'
    # logits (same logQ correction) or as an exact, uncorrected stratum (the paper's choice)
    familiar_loss: Literal["sampled", "stratified"] = "sampled"
    inference_seed: int = 0  # fixed sampling salt at inference (reproducible lists)


@dataclass
class MARLConfig:
    """Genre agents (actor-critic) steering the user tower (DESIGN §3)."""

    enabled: bool = False
    algorithm: Literal["a2c", "ppo"] = "a2c"
    shared_actor: bool = False  # share actor parameters across genre agents
    rl_every: int = 5  # supervised steps per RL step
    rl_batch_users: int = 256  # users per RL step
    action_scale: float = 1.0  # actions squashed to [-scale, scale] by tanh
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    ppo_clip: float = 0.2
    ppo_epochs: int = 4
    lr: float = 3e-4
    grad_clip: float = 1.0
    k: int = 10  # list length for the reward
    alpha: float = 1.0  # HR@K weight
    beta: float = 0.25  # Coverage(B) weight (defaults: docs/marl.md sweep)
    gamma: float = 0.25  # (1 - Gini(B)) weight
    delta: float = 0.5  # TailHR@K weight
    eta: float = 0.05  # Redundancy weight
    jaccard_weight: float = 0.0  # penalty on mean pairwise Jaccard of per-agent lists (sweep: 0)
    jaccard_max_genres: int = 4  # per-agent lists for the user's this-many most frequent genres
    credit: Literal["difference", "shared"] = "difference"  # batch terms: per-user marginal or shared
    hidden: int = 64  # actor and critic hidden width
    init_log_std: float = -0.5  # initial log-std of the pre-squash Gaussian policy
    per_agent_critic: bool = True  # per-agent value heads V_g on per-agent rewards (else V only)
    tail_feature: Literal["binary", "smooth"] = "binary"  # tail(i): tail_mask or inverse popularity
    steer_supervised: bool = False  # False: L_rec sees the base score (towers never cancel boosts)
    # units of b and t: "absolute" score units, or "score_std" = multiples of sigma_u, the
    # std over the catalogue of u's base scores (a boost of 1 moves a genre by one spread
    # for every user, whatever the tower's temperature): docs/marl.md "Action units"
    action_units: Literal["absolute", "score_std"] = "absolute"
    # reward targets are dropped from the supervised positives (True) or stay positives
    # (False: the RL state still leaves them out; L_rec keeps every train interaction)
    holdout_positives: bool = True
    # when the agents learn: "interleaved" (an RL step every rl_every supervised steps,
    # against the moving towers) and/or after the fit on the frozen validation-selected
    # towers for finetune_steps RL steps ("after_fit": only then). docs/marl.md "Two stages"
    schedule: Literal["interleaved", "after_fit"] = "interleaved"
    finetune_steps: int = 0  # RL steps on the frozen selected model after the fit
    # which snapshot of the after-fit stage is kept (every finetune_eval_every steps, the
    # agents before the stage included): "validation" = the best validation NDCG@10 (the
    # towers' own selection rule), "holdout" = the best reward on the reward targets of
    # a share finetune_holdout of the users that never train the agents
    finetune_judge: Literal["validation", "holdout"] = "validation"
    finetune_holdout: float = 0.2
    finetune_eval_every: int = 25
    # each agent's reward: the team reward r_{u,g} = R_u ("team"), or its difference
    # reward R_u(a) - R_u(a with a_{u,g} = 0) ("difference": what g's own action changed,
    # Wolpert & Tumer 2001; G extra list evaluations per step): docs/marl.md
    agent_credit: Literal["team", "difference"] = "team"
    # control cost rho: every reward pays rho (b_{u,g}^2 + t_{u,g}^2) for agent g's action
    # (the team reward the mean over agents), so an agent steers only where it buys reward
    action_cost: float = 0.0


@dataclass
class LossConfig:
    """Weights of the composite objective L = l_sup L_rec + l_RL L_MARL + ... (§4)."""

    rec: Literal["softmax", "bce"] = "softmax"
    logq: bool = True  # logQ correction of sampled-softmax logits (Yi et al., 2019)
    l_sup: float = 1.0
    l_rl: float = 1.0
    l_fair: float = 0.5  # L_GINI weight (times the GINI agent's lambda); docs/gini_agent.md
    # the least harmful weight on ML-100K validation with the transformer tower; no
    # weight beat leaving the tail loss out there (docs/fairness_components.md)
    l_tail: float = 0.05


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = 20
    batch_size: int = 512
    lr: float = 2e-3
    # the supervised optimiser's learning rate per step (train/schedule.py): constant, or
    # cosine / linear decay from lr to lr * lr_final_ratio over train.epochs, after a
    # linear warm-up of lr_warmup_epochs (fractions allowed)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    lr_warmup_epochs: float = 0.0
    lr_final_ratio: float = 0.0
    weight_decay: float = 0.0
    num_negatives: int = 256  # extra uniformly sampled negatives per batch (plus in-batch)
    # False: a row's candidates are its own positive and the shared sampled negatives only
    # (no in-batch negatives; a DDP step then equals a single-process step, distributed.py)
    in_batch_negatives: bool = True
    patience: int = 3  # early stopping on validation NDCG@10 (evaluations without gain)
    eval_every: int = 1  # epochs between validation evaluations
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    grad_clip: float = 5.0
    max_steps_per_epoch: int = 0  # 0 = full epoch
    # torch intra-op threads of training, evaluation and the demo (utils/runtime.py
    # apply_threads). 1 is safe on a shared CPU; on a dedicated machine raise it, or 0 =
    # torch's default (one per core): docs/speed.md measures both
    num_threads: int = 1
    # TensorBoard event files of every epoch record (losses, validation metrics, sampler,
    # GINI and MARL scalars) in <output_dir>/<name>/tb/ (rank 0 only); never changes training
    tensorboard: bool = True


@dataclass
class EvalConfig:
    """Evaluation protocols and metrics (DESIGN §5)."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 1024  # users scored at once
    sampled_negatives: int = 99  # negatives per user in the sampled protocol
    sampled_seed: int = 12345  # fixed seed of the sampled protocol
    # >= 1. Components whose inference draws a random sample (ContextGNN's neighbourhood
    # salt, BUHS's history sample) are scored as the mean of the scores of this many
    # draws (seeds inference_seed + 0..S-1), so a reported number is not one lucky draw;
    # 1 = the single draw inference_seed. Other models score once. docs/metrics.md
    inference_samples: int = 4
    # what a model reads as the user's history when scoring test: "train+val" = the train
    # items then the validation item, which precedes the test item in time (SASRec's
    # protocol; no model is retrained on it), "train" = train only. Validation always reads
    # train only. Models without a history input (BPR-MF, MostPop) are unaffected.
    test_history: Literal["train", "train+val"] = "train+val"


@dataclass
class ServingConfig:
    """Real-time serving: FAISS index, request limits, cold start (DESIGN §8)."""

    host: str = "127.0.0.1"  # bind address of `serve` (loopback unless told otherwise)
    port: int = 8000  # TCP port of `serve`
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto = flat up to ann_threshold
    ann_threshold: int = 50_000  # catalogues with more items get an IVF index under "auto"
    ivf_nlist: int = 0  # IVF cells; 0 = 4 * sqrt(n_items), rounded
    ivf_nprobe: int = 64  # IVF cells visited per query (recall@10 >= 0.99 on 100k items)
    hnsw_m: int = 32  # HNSW graph degree
    hnsw_ef_search: int = 128  # HNSW search beam width
    max_k: int = 1000  # largest list length a request may ask for
    max_batch: int = 256  # most users in one POST /recommend (more -> 413)
    seen: Literal["all", "train"] = "all"  # items never served again: all known or train only
    cold_start_beta: float = 0.5  # cold-start score pop^(1 - beta): 0 = popularity, 1 = flat
    cold_start_tail_quota: float = 0.2  # share of cold-start slots reserved for tail items
    cold_start_prior: float = 50.0  # pseudo-interactions shrinking a group's popularity to global
    # online exposure cap (fairness/exposure.py OnlineExposureBudget), in the offline
    # gini.exposure_cap's units (multiples of the fair share): an item that holds
    # ceil(exposure_cap * cap_k * window / n_items) of the first-cap_k slots of the last
    # `exposure_window` served lists is skipped (cap_k = the bundle's gini.cap_k); 0 = off
    exposure_cap: float = 0.0
    exposure_window: int = 10_000
    # how the cap is enforced: "window" = the sliding window above (stateful, first
    # come first served); "prices" = per-item prices lambda_i fitted once at start on the
    # bundle's users under C = ceil(exposure_cap * cap_k * U / n_items)
    # (fairness/exposure.py fit_item_prices), subtracted from every score: stateless,
    # each list independent of the others (docs/serving.md "Item prices")
    exposure_mode: Literal["window", "prices"] = "window"
    exposure_fit_users: int = 20_000  # users the prices are fitted on (a fixed-seed sample beyond)


@dataclass
class Config:
    """Top-level configuration of a run."""

    name: str = "run"  # run name; results go to <output_dir>/<name>/
    seed: int = 42  # one seed for everything (torch, numpy, python, samplers)
    output_dir: str = "runs"
    # "{name}" is replaced by the run name (run_checkpoint_dir): every run keeps its own
    # checkpoints; checkpoints/model_best.pt links to the latest run's best model
    checkpoint_dir: str = "checkpoints/{name}"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fair_sampler: FairSamplerConfig = field(default_factory=FairSamplerConfig)
    buhs: BUHSConfig = field(default_factory=BUHSConfig)
    gini: GiniConfig = field(default_factory=GiniConfig)
    tail_loss: TailLossConfig = field(default_factory=TailLossConfig)
    exposure_budget: ExposureBudgetConfig = field(default_factory=ExposureBudgetConfig)
    context_gnn: ContextGNNConfig = field(default_factory=ContextGNNConfig)
    marl: MARLConfig = field(default_factory=MARLConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML serialisable)."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Allowed values (checked at load time, after the types)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric key: ``lo <= x <= hi`` (``lo < x`` / ``x < hi``
    when ``open_lo`` / ``open_hi``; ``None`` = unbounded). For a list key every
    element must lie in the interval and the list must hold at least ``min_len``."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    min_len: int = 0

    def describe(self) -> str:
        """The interval in words, e.g. ``>= 1``, ``> 0``, ``in [0, 1)``."""
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.open_lo else '['}{num(self.lo)}, "
                    f"{num(self.hi)}{')' if self.open_hi else ']'}")
        if self.lo is not None:
            return f"{'>' if self.open_lo else '>='} {num(self.lo)}"
        return f"{'<' if self.open_hi else '<='} {num(self.hi)}"

    def __call__(self, value: Any, key: str) -> None:
        if isinstance(value, list):
            if len(value) < self.min_len:
                raise ConfigError(f"{key}: expected at least {self.min_len} value(s), got {value!r}")
            for i, v in enumerate(value):
                self(v, f"{key}[{i}]")
            return
        lo_ok = self.lo is None or (value > self.lo if self.open_lo else value >= self.lo)
        hi_ok = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        if not (lo_ok and hi_ok):
            raise ConfigError(f"{key}: expected a value {self.describe()}, got {value!r}")


def _run_name(value: str, key: str) -> None:
    """A run name is a relative path below ``output_dir``: not empty, not absolute,
    no ``..`` part (either slash), so results can never land outside ``output_dir``."""
    parts = re.split(r"[/\\]", value)
    if not value.strip() or Path(value).is_absolute() or value[0] in "/\\" or ".." in parts:
        raise ConfigError(f"{key}: expected a relative folder name inside output_dir "
                          f"(no absolute path, no '..'), got {value!r}")


_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)?")  # "" = auto


def check_device(value: str, key: str = "train.device") -> None:
    """``auto | cpu | cuda | cuda:N | mps``; anything else is refused before any work."""
    if not _DEVICE.fullmatch(value):
        raise ConfigError(f"{key}: expected auto, cpu, cuda, cuda:N or mps, got {value!r}")


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_lo=True)
UNIT = Range(0, 1)
SEED = Range(0, 2**32 - 1)

Check = Callable[[Any, str], None]
# Every key with a constraint beyond its type, in one place; keys not listed take any
# value of their type. A test checks that each entry names a real field.
CHECKS: dict[type, dict[str, Check]] = {
    SyntheticConfig: {"n_users": AT_LEAST_1, "n_items": AT_LEAST_1,
                      "interactions_per_user": POSITIVE, "n_genres": AT_LEAST_1,
                      "zipf_exponent": NON_NEGATIVE, "genre_affinity": NON_NEGATIVE,
                      "latent_dim": AT_LEAST_1, "seed": SEED,
                      "popularity_sigma": NON_NEGATIVE, "demographic_shift": NON_NEGATIVE,
                      "min_history": AT_LEAST_1, "history_spread": NON_NEGATIVE,
                      "extra_genre_prob": UNIT, "taste_drift": NON_NEGATIVE,
                      "genre_drift": NON_NEGATIVE,
                      "transition_prob": Range(0, 0.95), "transition_successors": AT_LEAST_1,
                      "episode_length": Range(1),
                      "niche_fraction": UNIT, "niche_rate": UNIT},
    DataConfig: {"tail_fraction": UNIT, "min_item_count": NON_NEGATIVE},
    ModelConfig: {"dim": AT_LEAST_1, "id_dim": AT_LEAST_1, "hidden": AT_LEAST_1,
                  "history_len": AT_LEAST_1, "dropout": Range(0, 1, open_hi=True),
                  "init_temperature": POSITIVE, "year_buckets": AT_LEAST_1,
                  "n_blocks": NON_NEGATIVE, "n_heads": AT_LEAST_1,
                  "seq_dropout": Range(0, 1, open_hi=True), "full_softmax_max_items": NON_NEGATIVE,
                  "ffn_dim": NON_NEGATIVE, "attn_dropout": Range(-1, 1, open_hi=True)},
    FairSamplerConfig: {"beta": NON_NEGATIVE, "max_per_batch": AT_LEAST_1},
    BUHSConfig: {"fanout": AT_LEAST_1, "temperature": POSITIVE, "inference_seed": SEED},
    GiniConfig: {"tau": POSITIVE, "target": UNIT, "lr_dual": NON_NEGATIVE,
                 "init_lambda": NON_NEGATIVE, "n_candidates": NON_NEGATIVE,
                 "exposure_cap": NON_NEGATIVE, "cap_k": AT_LEAST_1,
                 "cap_candidates": AT_LEAST_1, "cover_floor": NON_NEGATIVE},
    ContextGNNConfig: {"layers": Range(1, 3), "fanout": AT_LEAST_1,
                       "familiar_size": NON_NEGATIVE, "recent": NON_NEGATIVE,
                       "item_neighbours": AT_LEAST_1, "inference_seed": SEED},
    MARLConfig: {"rl_every": AT_LEAST_1, "rl_batch_users": AT_LEAST_1,
                 "action_scale": POSITIVE, "entropy_coef": NON_NEGATIVE,
                 "value_coef": NON_NEGATIVE, "ppo_clip": POSITIVE, "ppo_epochs": AT_LEAST_1,
                 "lr": POSITIVE, "grad_clip": POSITIVE, "k": AT_LEAST_1,
                 "alpha": NON_NEGATIVE, "beta": NON_NEGATIVE, "gamma": NON_NEGATIVE,
                 "delta": NON_NEGATIVE, "eta": NON_NEGATIVE, "jaccard_weight": NON_NEGATIVE,
                 "jaccard_max_genres": AT_LEAST_1, "hidden": AT_LEAST_1,
                 "finetune_steps": NON_NEGATIVE, "action_cost": NON_NEGATIVE,
                 "finetune_holdout": Range(0, 1, open_hi=True),
                 "finetune_eval_every": AT_LEAST_1},
    LossConfig: {"l_sup": NON_NEGATIVE, "l_rl": NON_NEGATIVE, "l_fair": NON_NEGATIVE,
                 "l_tail": NON_NEGATIVE},
    TrainConfig: {"epochs": AT_LEAST_1, "batch_size": AT_LEAST_1, "lr": POSITIVE,
                  "lr_warmup_epochs": NON_NEGATIVE, "lr_final_ratio": UNIT,
                  "weight_decay": NON_NEGATIVE, "num_negatives": NON_NEGATIVE,
                  "patience": AT_LEAST_1, "eval_every": AT_LEAST_1, "device": check_device,
                  "grad_clip": POSITIVE, "max_steps_per_epoch": NON_NEGATIVE,
                  "num_threads": NON_NEGATIVE},
    EvalConfig: {"ks": Range(1, min_len=1), "batch_size": AT_LEAST_1,
                 "sampled_negatives": AT_LEAST_1, "sampled_seed": SEED,
                 "inference_samples": AT_LEAST_1},
    ServingConfig: {"port": Range(1, 65535), "ann_threshold": NON_NEGATIVE,
                    "ivf_nlist": NON_NEGATIVE, "ivf_nprobe": AT_LEAST_1, "hnsw_m": AT_LEAST_1,
                    "hnsw_ef_search": AT_LEAST_1, "max_k": AT_LEAST_1, "max_batch": AT_LEAST_1,
                    "cold_start_beta": UNIT, "cold_start_tail_quota": UNIT,
                    "cold_start_prior": NON_NEGATIVE, "exposure_cap": NON_NEGATIVE,
                    "exposure_window": AT_LEAST_1, "exposure_fit_users": AT_LEAST_1},
    Config: {"name": _run_name, "seed": SEED},
}


def validate(obj: Any, prefix: str = "") -> None:
    """Check every constrained key of the dataclass ``obj`` (and its nested sections)
    against :data:`CHECKS`; raises :class:`ConfigError` naming the first bad key and
    its allowed values. Types are checked earlier, by :func:`config_from_dict`."""
    checks = CHECKS.get(type(obj), {})
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
        elif f.name in checks:
            checks[f.name](value, prefix + f.name)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; ints are accepted for floats."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (inner,) = get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(f"unknown key '{prefix}{k}' (valid: {sorted(names)})")
    obj = cls()
    for k, v in data.items():
        setattr(obj, k, _coerce(v, hints[k], prefix + k))
    return obj


def _upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Configs written before ``exposure_budget`` existed switched the budget with
    ``gini.enabled``. Every stored config (checkpoint, results.json) carries every key,
    so a dict with ``gini.exposure_cap`` and no ``exposure_budget`` section is such a
    config: it gets ``exposure_budget.enabled = gini.enabled`` and evaluates as it did."""
    gini = data.get("gini")
    if "exposure_budget" in data or not isinstance(gini, dict) or "exposure_cap" not in gini:
        return data
    return {**data, "exposure_budget": {"enabled": gini.get("enabled", False)}}


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a (partial) nested dict: types first,
    then the allowed values of :data:`CHECKS` (legacy dicts upgraded first,
    :func:`_upgrade_legacy`)."""
    cfg = _build(Config, _upgrade_legacy(data or {}))
    validate(cfg)
    return cfg


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A bare name (``movielens.yaml``) resolves in ``configs/``; paths stay as given."""
    p = Path(path)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.exists():
            return cand
    raise ConfigError(f"config file not found: {path} (also looked in {CONFIG_DIR})")


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; ``extends: other.yaml`` merges a parent file first
    (a chain that comes back to a file already on it is refused)."""
    p = resolve_config_path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, expected a YAML config file")
    if p.resolve() in _chain:
        names = " -> ".join(str(c.name) for c in (*_chain, p.resolve()))
        raise ConfigError(f"{p}: 'extends' cycle: {names}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text (UTF-8) YAML file (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at top level")
    parent = data.pop("extends", None)
    if parent:
        if not isinstance(parent, str):
            raise ConfigError(f"{p}: extends: expected a file name, got {parent!r}")
        data = _deep_merge(load_yaml(p.parent / parent, (*_chain, p.resolve())), data)
    return data


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML errors span several)."""
    return " ".join(str(exc).split())


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> nested dict; the value is parsed as YAML (``1e-3``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value")
    key, raw = text.split("=", 1)
    if not key.strip() or "" in key.strip().split("."):
        raise ConfigError(f"override '{text}': expected key=value with a dotted key (train.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML "
                          f"({getattr(exc, 'problem', None) or _one_line(exc)})") from None

    if isinstance(value, str) and raw.strip() != "":
        # YAML reads 1e-3 as a string; accept plain float literals too.
        try:
            value = float(raw) if any(c in raw for c in ".eE") else value
        except ValueError:
            pass
    out: dict[str, Any] = {}
    cur = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """The nested dict ``data`` with each ``key=value`` of ``overrides`` merged in, in
    order (a later override of the same key wins); ``data`` itself is not modified.
    The one place overrides are applied: :func:`with_overrides`, :func:`load_config`
    and the business-case config all go through it."""
    for o in overrides or []:
        data = _deep_merge(data, parse_override(o))
    return data


def with_overrides(base: Config | dict[str, Any], overrides: list[str] | None) -> Config:
    """``base`` (a config or its dict) with ``key=value`` overrides applied, validated."""
    data = base.to_dict() if isinstance(base, Config) else dict(base)
    return config_from_dict(apply_overrides(data, overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (optional) <- ``key=value`` overrides, then validate."""
    return with_overrides(load_yaml(path) if path else {}, overrides)


def run_checkpoint_dir(cfg: Config) -> Path:
    """The run's checkpoint folder: ``checkpoint_dir`` with ``{name}`` replaced by the
    run name (default ``checkpoints/<name>/``, so runs never overwrite each other's
    ``model_best.pt``/``last.pt``); a path without ``{name}`` is used as given."""
    return Path(cfg.checkpoint_dir.replace("{name}", cfg.name))


def fingerprint_config(cfg: Config) -> dict[str, Any]:
    """The parts of a config that must match for a checkpoint to be resumable."""
    d = cfg.to_dict()
    for volatile in ("name", "output_dir", "checkpoint_dir"):
        d.pop(volatile, None)
    d["train"] = {k: v for k, v in d["train"].items()
                  if k not in ("epochs", "device", "num_threads", "patience", "tensorboard")}
    d.pop("eval", None)
    d.pop("serving", None)  # serving settings never block a resume
    d.pop("exposure_budget", None)  # evaluation-time only: trains nothing
    if d["data"]["source"] != "synthetic":  # the generator's settings read no real data
        d["data"].pop("synthetic", None)
    return d
