"""Evaluation harness: full/sampled ranking against oracles, summaries, file scoring."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from marl_two_tower.data.dataset import Dataset, PredefinedSplit
from marl_two_tower.data.errors import DataError
from marl_two_tower.data.split import Split, leave_one_out
from marl_two_tower.eval.external import add_metrics_subparser, main_metrics, metrics_from_files
from marl_two_tower.eval.protocols import (
    evaluate,
    evaluate_per_user,
    rank_full,
    rank_sampled,
    sample_negatives,
)


def make_dataset(
    histories: list[list[int]],
    n_items: int,
    user_features: dict[str, tuple[list[int], list[str]]] | None = None,
    predefined: PredefinedSplit | None = None,
) -> Dataset:
    """Dataset from per-user item sequences in time order (timestamp = position)."""
    users = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)])
    items = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    ts = np.concatenate([np.arange(len(h), dtype=np.float64) for h in histories])
    feats = user_features or {}
    return Dataset(
        name="hand",
        users=users,
        items=items,
        timestamps=ts,
        n_users=len(histories),
        n_items=n_items,
        user_ids=np.arange(len(histories)),
        item_ids=np.arange(n_items),
        item_genres=np.zeros((n_items, 1), dtype=bool),
        genre_names=["g"],
        item_year=np.zeros(n_items, dtype=np.int32),
        user_features={k: np.asarray(c) for k, (c, _) in feats.items()},
        user_feature_labels={k: list(lab) for k, (_, lab) in feats.items()},
        predefined=predefined,
    )


def matrix_scorer(scores: np.ndarray):
    """ScoreFn reading rows of a fixed [n_users, n_items] score matrix."""
    table = torch.as_tensor(scores)
    return lambda users: table[torch.from_numpy(users)]


# Hand fixture (time order):
#   u0: 0, 1, 2, 3  -> train [0, 1], val 2, test 3
#   u1: 4, 0, 4     -> train [4],    val 0, test 4 (a re-watch: target is also train)
#   u2: 1, 2        -> train-only (< 3 interactions)
# Every user scores items as [5, 4, 3, 2, 1] (item 0 best).
# Train popularity [1, 2, 1, 0, 1] (total 5); ascending with cumulative share:
# item3 0, item0 .2, item2 .4, ... -> tail = {3, 0} (share <= 0.2).
@pytest.fixture
def hand_split() -> Split:
    ds = make_dataset([[0, 1, 2, 3], [4, 0, 4], [1, 2]], 5, user_features={"gender": ([0, 1, 0], ["F", "M"])})
    return leave_one_out(ds)


PREF = np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), (3, 1))


def test_hand_split_is_what_the_comments_say(hand_split: Split) -> None:
    assert hand_split.test_items.tolist() == [3, 4, -1]
    assert hand_split.val_items.tolist() == [2, 0, -1]
    assert hand_split.item_pop.tolist() == [1, 2, 1, 0, 1]
    assert np.flatnonzero(hand_split.tail_mask).tolist() == [0, 3]


def test_rank_full_masks_train_and_validation_whatever_the_target(hand_split: Split) -> None:
    res = rank_full(hand_split, matrix_scorer(PREF), "test", k_max=5)
    assert res.users.tolist() == [0, 1]
    # u0: {0, 1} train and 2 val masked -> only 3 (score 2), 4 (score 1) remain
    # u1: 4 train (also the re-watched target) and 0 val masked -> 1, 2, 3 remain; the
    # masked target is in no list: rank n_items + 1
    assert res.recs.tolist() == [[3, 4, -1, -1, -1], [1, 2, 3, -1, -1]]
    assert res.ranks.tolist() == [1, 6] and res.ties.tolist() == [0, 0]
    assert res.targets.tolist() == [3, 4]


def test_rank_full_validation_masks_train_only(hand_split: Split) -> None:
    res = rank_full(hand_split, matrix_scorer(PREF), "val", k_max=3)
    # u0: train {0, 1} masked, target 2 now ranks first; u1: train {4} masked, target 0
    assert res.recs.tolist() == [[2, 3, 4], [0, 1, 2]]
    assert res.ranks.tolist() == [1, 1]


def _oracle(split: Split, scores: np.ndarray, part: str, k: int):
    """Brute force, one user at a time: mask (the target too, when it is a train
    item), sort, count."""
    recs, ranks = [], []
    for u in split.eval_users(part):
        t = split.targets(part)[u]
        masked = set(split.history(u).tolist())
        if part == "test":
            masked.add(int(split.val_items[u]))
        allowed = np.array([i for i in range(split.n_items) if i not in masked])
        s = scores[u, allowed]
        ranks.append(split.n_items + 1 if t in masked else 1 + int((s > scores[u, t]).sum()))
        top = allowed[np.argsort(-s, kind="stable")][:k].tolist()
        recs.append(top + [-1] * (k - len(top)))
    return np.array(recs), np.array(ranks)


@pytest.fixture
def random_split() -> Split:
    rng = np.random.default_rng(3)
    n_items = 30
    # repeats allowed: re-watched targets are exercised too
    histories = [rng.integers(0, n_items, rng.integers(1, 25)).tolist() for _ in range(40)]
    return leave_one_out(make_dataset(histories, n_items))


@pytest.mark.parametrize("part", ["val", "test"])
def test_rank_full_matches_brute_force_oracle(random_split: Split, part: str) -> None:
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(random_split.n_users, random_split.n_items))
    exp_recs, exp_ranks = _oracle(random_split, scores, part, 10)
    for batch_size in (1, 7, 1024):
        res = rank_full(random_split, matrix_scorer(scores), part, 10, batch_size)
        np.testing.assert_array_equal(res.recs, exp_recs)
        np.testing.assert_array_equal(res.ranks, exp_ranks)
    # a subset of users, in the order given
    some = random_split.eval_users(part)[::-3]
    sub = rank_full(random_split, matrix_scorer(scores), part, 10, users=some)
    assert sub.users.tolist() == some.tolist()
    order = np.searchsorted(random_split.eval_users(part), some)
    np.testing.assert_array_equal(sub.ranks, exp_ranks[order])


def test_rank_full_train_items_are_never_recommended(random_split: Split) -> None:
    scores = np.random.default_rng(5).normal(size=(random_split.n_users, random_split.n_items))
    res = rank_full(random_split, matrix_scorer(scores), "test", 10)
    for row, u in zip(res.recs, res.users, strict=True):
        forbidden = set(random_split.history(u).tolist()) | {random_split.val_items[u]}
        assert not forbidden & set(row.tolist())


def test_rank_full_rejects_bad_scores_and_users(hand_split: Split) -> None:
    with pytest.raises(ValueError, match="shape"):
        rank_full(hand_split, lambda u: torch.zeros(len(u), 4))
    with pytest.raises(ValueError, match="NaN"):
        rank_full(hand_split, lambda u: torch.full((len(u), 5), math.nan))
    with pytest.raises(ValueError, match="without a test target"):
        rank_full(hand_split, matrix_scorer(PREF), users=np.array([2]))


def test_rank_full_accepts_half_precision_scores(hand_split: Split) -> None:
    table = torch.as_tensor(PREF, dtype=torch.bfloat16)
    res = rank_full(hand_split, lambda u: table[torch.from_numpy(u)], "test", k_max=5)
    assert res.recs.tolist() == [[3, 4, -1, -1, -1], [1, 2, 3, -1, -1]]


def test_rank_full_does_not_modify_the_callers_scores(hand_split: Split) -> None:
    table = torch.as_tensor(PREF, dtype=torch.float32)
    rank_full(hand_split, lambda u: table[: len(u)])  # a view of the caller's tensor
    assert torch.equal(table, torch.as_tensor(PREF, dtype=torch.float32))


# NCF-style predefined split: test pairs and their negatives ship with the data.
#   u0: 0, 1, 2 -> val 2, train [0, 1]; test 3 vs negatives [4, 5, 6]
#   u1: 1, 2    -> val 2, train [1];    test 7 vs negatives [0, 3, 4]
NCF_SCORES = np.array(
    [
        [0, 0, 0, 0.5, 0.9, 0.1, 0.7, 0],  # target 0.5 < 0.9, 0.7 -> rank 3
        [0.9, 0, 0, 0.2, 0.2, 0, 0, 0.2],  # target 0.2 < 0.9, ties 3 and 4 -> rank 2..4
    ]
)


@pytest.fixture
def ncf_split() -> Split:
    pre = PredefinedSplit(
        test_users=np.array([0, 1]),
        test_items=np.array([3, 7]),
        test_negatives=np.array([[4, 5, 6], [0, 3, 4]]),
    )
    return leave_one_out(make_dataset([[0, 1, 2], [1, 2]], 8, predefined=pre))


def test_rank_sampled_with_given_negatives(ncf_split: Split) -> None:
    res = rank_sampled(ncf_split, matrix_scorer(NCF_SCORES), "test", k_max=5)
    # u1's target (0.2) ties with negatives 3 and 4: best rank 2, two ties
    assert res.ranks.tolist() == [3, 2] and res.ties.tolist() == [0, 2]
    # sorted candidates; the target goes after the items it ties with
    assert res.recs.tolist() == [[4, 6, 3, 5, -1], [0, 3, 4, 7, -1]]
    out = evaluate(ncf_split, matrix_scorer(NCF_SCORES), ks=(1, 2, 3), protocol="sampled")
    s = out["sampled"]
    # u1's rank is uniform on {2, 3, 4}: P(<= 2) = 1/3, P(<= 3) = 2/3; u0 is rank 3
    assert s["HR@1"] == 0.0
    assert s["HR@2"] == pytest.approx((0 + 1 / 3) / 2)
    assert s["HR@3"] == pytest.approx((1 + 2 / 3) / 2)
    # NDCG@3: u0 1/log2(4); u1 (1/log2(3) + 1/log2(4) + 0) / 3
    assert s["NDCG@3"] == pytest.approx((0.5 + (1 / math.log2(3) + 0.5) / 3) / 2)
    # MRR: u0 1/3; u1 (1/2 + 1/3 + 1/4) / 3 = 13/36
    assert s["MRR"] == pytest.approx((1 / 3 + 13 / 36) / 2)
    assert out["sampled_protocol"] == {"n_negatives": 3, "negatives": "given"}


def test_sample_negatives_are_unseen_distinct_and_deterministic(random_split: Split) -> None:
    users = random_split.eval_users("test")
    negs = sample_negatives(random_split, users, n_neg=5, seed=1)
    assert negs.shape == (len(users), 5)
    for row, u in zip(negs, users, strict=True):
        seen = set(random_split.history(u).tolist())
        seen |= {random_split.val_items[u], random_split.test_items[u]}
        assert len(set(row.tolist())) == 5 and not seen & set(row.tolist())
    np.testing.assert_array_equal(negs, sample_negatives(random_split, users, 5, seed=1))
    assert not np.array_equal(negs, sample_negatives(random_split, users, 5, seed=2))


def test_sample_negatives_dense_user_and_too_few_items() -> None:
    # u0 saw items 0..6 of 10: exactly 3 unseen items, so the negatives are those
    split = leave_one_out(make_dataset([list(range(7)), [0, 1, 2]], 10))
    negs = sample_negatives(split, np.array([0]), n_neg=3)
    assert sorted(negs[0].tolist()) == [7, 8, 9]
    with pytest.raises(ValueError, match="only 3 non-interacted"):
        sample_negatives(split, np.array([0, 1]), n_neg=4)


def test_sample_negatives_are_uniform() -> None:
    # 3000 users who all saw items 0, 1, 2 -> negatives uniform over the 17 others
    split = leave_one_out(make_dataset([[0, 1, 2]] * 3000, 20))
    negs = sample_negatives(split, np.arange(3000), n_neg=5, seed=0)
    counts = np.bincount(negs.ravel(), minlength=20)
    assert counts[:3].sum() == 0
    expected = 3000 * 5 / 17
    assert np.abs(counts[3:] - expected).max() < 0.1 * expected


def test_rank_sampled_uniform_for_validation(random_split: Split) -> None:
    scores = np.random.default_rng(6).normal(size=(random_split.n_users, random_split.n_items))
    res = rank_sampled(random_split, matrix_scorer(scores), "val", n_neg=4, seed=0, k_max=3)
    negs = sample_negatives(random_split, res.users, 4, seed=0)
    target_scores = scores[res.users, res.targets][:, None]
    # a re-consumed target (also a train item) is masked, as in the full protocol
    rewatch = np.array([t in set(random_split.history(u).tolist())
                        for u, t in zip(res.users, res.targets, strict=True)])
    assert rewatch.any()
    target_scores[rewatch] = -np.inf
    expected = 1 + (scores[res.users[:, None], negs] > target_scores).sum(1)
    np.testing.assert_array_equal(res.ranks, expected)


def test_evaluate_full_summary(hand_split: Split) -> None:
    # u0 saw 4 of the 5 items, so the sampled protocol can draw only 1 negative
    out = evaluate(hand_split, matrix_scorer(PREF), ks=(1, 5), protocol="both", n_neg=1)
    json.dumps(out, allow_nan=False)  # JSON-serialisable, no NaN
    assert out["n_users"] == 2 and out["part"] == "test"
    assert out["tail"] == {"by": "interactions", "fraction": 0.2, "n_tail_items": 2}
    f = out["full"]
    # lists u0 [3, 4], u1 [1, 2, 3]; targets 3 (tail, pos 1) and 4 (head; a re-watch,
    # masked like u1's other train items: in no list, rank n_items + 1 = 6)
    assert f["HR@1"] == 0.5 and f["HR@5"] == 0.5
    assert f["NDCG@5"] == pytest.approx(0.5)
    assert f["MRR"] == pytest.approx((1 + 1 / 6) / 2)
    assert f["Coverage@5"] == pytest.approx(4 / 5)  # {1, 2, 3, 4}
    # exposure @5 = [0, 1, 1, 2, 1]: sorted weights [-4,-2,0,2,4] -> -2 + 0 + 2 + 8 = 8; / (5*5)
    assert f["Gini@5"] == pytest.approx(8 / 25)
    assert f["TailHR@1"] == 1.0 and f["HeadHR@1"] == 0.0 and f["HeadHR@5"] == 0.0
    # 5 filled slots, head items {1, 2, 4}: u0 4; u1 1, 2 -> 3/5
    assert f["Redundancy@5"] == pytest.approx(3 / 5)
    # pop [1, 2, 1, 0, 1]: u0 0 + 1, u1 2 + 1 + 0 -> 4 / 5
    assert f["AvgPop@5"] == pytest.approx(4 / 5)
    g = f["groups"]["gender"]
    assert g["HR@1"] == {"F": 1.0, "M": 0.0} and g["std@1"] == 0.5 and g["gap@1"] == 1.0
    assert "sampled" in out and out["sampled_protocol"]["negatives"] == "uniform(seed=12345)"
    assert "groups" not in evaluate(hand_split, matrix_scorer(PREF), groups=False)["full"]


def test_evaluate_per_user_aligns_with_summary(random_split: Split) -> None:
    scores = np.random.default_rng(7).normal(size=(random_split.n_users, random_split.n_items))
    fn = matrix_scorer(scores)
    res, pu = evaluate_per_user(random_split, fn, "test", ks=(5, 10))
    summary = evaluate(random_split, fn, "test", ks=(5, 10))["full"]
    assert len(pu["hit@5"]) == len(res.users) == len(random_split.eval_users("test"))
    assert pu["hit@10"].mean() == pytest.approx(summary["HR@10"])
    assert pu["ndcg@5"].mean() == pytest.approx(summary["NDCG@5"])
    assert pu["rr"].mean() == pytest.approx(summary["MRR"])
    if summary["TailHR@10"] is not None:
        assert np.nanmean(pu["tailhit@10"]) == pytest.approx(summary["TailHR@10"])


# ---------------------------------------------------------------------------
# metrics_from_files
# ---------------------------------------------------------------------------

TRAIN_TSV = """user\titem\trating\ttimestamp
alice\tm1\t5\t1
alice\tm2\t3\t2
bob\tm1\t4\t1
bob\tm3\t2\t2
carol\tm1\t5\t1
carol\tm2\t4\t3
dave\tm2\t1\t1
"""
TEST_TSV = "user\titem\nalice\tm4\nbob\tm2\ncarol\tm3\ndave\tm1\n"
# ranks out of order on purpose; eve is not a test user; dave has no list
RECS_CSV = """user,item,rank
alice,m1,2
alice,m4,1
alice,m3,3
bob,m1,1
bob,m3,2
bob,m2,3
carol,m4,1
carol,m1,2
eve,m1,1
"""
USERS_CSV = "user,gender,age\nalice,F,25\nbob,M,25\ncarol,F,\ndave,M,35\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in [
        ("train.tsv", TRAIN_TSV),
        ("test.tsv", TEST_TSV),
        ("recs.csv", RECS_CSV),
        ("users.csv", USERS_CSV),
        ("items.csv", "item,title\nm1,a\nm2,b\nm3,c\nm4,d\nm5,e\n"),
    ]:
        (tmp_path / name).write_text(text)
        paths[name.split(".")[0]] = tmp_path / name
    return paths


def test_metrics_from_files_hand_values(files: dict[str, Path]) -> None:
    out = metrics_from_files(files["train"], files["test"], files["recs"], users_path=files["users"], k=2)
    # Train popularity m1 3, m2 3, m3 1, m4 0 (total 7). Ascending cumulative share:
    # m4 0, m3 1/7 <= 0.2, m1 4/7 -> tail {m3, m4}.
    # Lists @2: alice [m4, m1], bob [m1, m3], carol [m4, m1], dave [] (no recs).
    # Targets: alice m4 (hit at 1), bob m2, carol m3, dave m1 (misses).
    assert out["HR@2"] == 0.25 and out["NDCG@2"] == 0.25 and out["MRR@2"] == 0.25
    assert out["Coverage@2"] == 0.75  # {m1, m3, m4} of 4 items
    # exposure m1 3, m2 0, m3 1, m4 2 -> sorted [0,1,2,3]: (-1 + 2 + 9) / (4 * 6)
    assert out["Gini@2"] == pytest.approx(10 / 24)
    assert out["TailHR@2"] == 0.5  # alice hit, carol missed
    assert out["HeadHR@2"] == 0.0  # bob, dave
    assert out["Redundancy@2"] == 0.5  # 3 of 6 filled slots hold m1 (head)
    assert out["AvgPop@2"] == pytest.approx(10 / 6)  # (0+3) + (3+1) + (0+3)
    assert out["n_users"] == 4 and out["n_items"] == 4 and out["n_users_without_recs"] == 1
    assert out["tail"] == {"by": "interactions", "fraction": 0.2, "n_tail_items": 2}
    # gender F: alice 1, carol 0 -> 0.5; M: 0 -> std 0.25, gap 0.5
    gender, age = out["groups"]["gender"], out["groups"]["age"]
    assert gender["HR@2"] == {"F": 0.5, "M": 0.0} and gender["std@2"] == 0.25
    assert gender["gap@2"] == 0.5
    # age: carol unknown; "25" alice 1, bob 0 -> 0.5; "35" dave 0
    assert age["HR@2"] == {"25": 0.5, "35": 0.0} and age["n_users"] == {"25": 2, "35": 1}
    json.dumps(out, allow_nan=False)


def test_metrics_from_files_item_catalogue_and_k(files: dict[str, Path]) -> None:
    out = metrics_from_files(files["train"], files["test"], files["recs"], files["items"], k=3)
    assert out["n_items"] == 5
    # @3 bob's list reaches m2 at position 3: HR = 2/4, NDCG = (1 + 1/log2(4)) / 4
    assert out["HR@3"] == 0.5 and out["NDCG@3"] == pytest.approx(1.5 / 4)
    assert out["Coverage@3"] == pytest.approx(4 / 5)  # m1..m4 of 5 items, m5 never


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("recs.csv", "user,item,rank\nalice,m1,1\nbob,m2\n", r"recs.csv:3: expected 3 fields"),
        ("recs.csv", "user,item\nalice,m1\n", r"recs.csv:1: missing column 'rank'"),
        ("recs.csv", "user,item,rank\nalice,m1,x\n", r"recs.csv:2: rank must be an integer"),
        ("recs.csv", "user,item,rank\nalice,m1,0\n", r"recs.csv:2: rank must be >= 1"),
        ("recs.csv", "user,item,rank\na,m1,1\na,m2,1\n", r"recs.csv:3: .*rank '1' twice"),
        ("recs.csv", "user,item,rank\na,m1,1\na,m1,2\n", r"recs.csv:3: .*item 'm1' twice"),
        ("recs.csv", "user,item,rank\na,m1,1\nuser,item,rank\n", r"recs.csv:3: duplicate header"),
        ("recs.csv", "", r"recs.csv: empty file"),
        ("recs.csv", "user,item,rank\n", r"recs.csv: no data rows"),
        ("recs.csv", "user,item,rank\n,m1,1\n", r"recs.csv:2: empty 'user' field"),
        ("test.tsv", "user\titem\na\tm1\na\tm2\n", r"test.tsv:3: .*more than one test item"),
        ("test.tsv", "user\tuser\titem\na\tb\tm1\n", r"test.tsv:1: column 'user' appears twice"),
    ],
)
def test_metrics_from_files_errors(files: dict[str, Path], name: str, text: str, match: str) -> None:
    path = files[name.split(".")[0]]
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        metrics_from_files(files["train"], files["test"], files["recs"])


def test_metrics_from_files_bad_encoding_and_sniffing(files: dict[str, Path]) -> None:
    files["recs"].write_bytes(b"user,item,rank\nalice,m1,1\nbob,\xff\xfe,1\n")
    with pytest.raises(DataError, match="recs.csv:3: not valid UTF-8"):
        metrics_from_files(files["train"], files["test"], files["recs"])
    # unknown extension: the delimiter is sniffed from the header
    sniffed = files["recs"].with_suffix(".txt")
    sniffed.write_text("user;item;rank\nalice;m4;1\n")
    out = metrics_from_files(files["train"], files["test"], sniffed, k=1)
    assert out["HR@1"] == 0.25


def test_metrics_cli(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="marl-two-tower")
    add_metrics_subparser(parser.add_subparsers(dest="command"))
    out_path = tmp_path / "out" / "m.json"
    args = parser.parse_args(
        ["metrics", "--train", str(files["train"]), "--test", str(files["test"]),
         "--recs", str(files["recs"]), "-k", "2", "--output", str(out_path)]
    )  # fmt: skip
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_path.read_text()) and printed["HR@2"] == 0.25
    files["test"].write_text("user\titem\nalice\n")
    assert main_metrics(args) == 2
    assert "test.tsv:2: expected 2 fields" in capsys.readouterr().err
