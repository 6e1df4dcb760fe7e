"""Python API + `s2gr recommend` on a tiny trained run; damaged and mismatched artifacts give clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from s2gr_ray.cli import main
from s2gr_ray.serving.api import ServingError

pytestmark = [pytest.mark.ray, pytest.mark.deepspeed]  # the shared run is trained with Ray Train + DeepSpeed


def asin(i: int) -> str:
    return f"B{i:09d}"


def test_topk_valid_unique_sorted_with_reasoning_path(recommender, test_rows):
    rec = recommender
    histories = [row["history"] for row in test_rows[:20]]
    results = rec.recommend(histories, k=10, id_type="item_id")
    n_sem, n_think = rec.tokenizer.num_semantic_levels, rec.model.cfg.n_think
    for res in results:
        ids = [i.item_id for i in res.items]
        scores = [i.score for i in res.items]
        assert len(ids) == 10 and len(set(ids)) == 10
        assert all(1 <= i <= rec.num_items for i in ids)
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
        assert [i.rank for i in res.items] == list(range(1, 11))
        assert all(i.raw_id == asin(i.item_id) and i.title == rec.catalog["title"][i.item_id - 1] for i in res.items)
        assert sorted({(s.level, s.step) for s in res.reasoning}) == [
            (lv, st) for lv in range(1, n_sem + 1) for st in range(1, n_think + 1)]
        for s in res.reasoning:
            assert 0 <= s.cluster < rec.model.num_coarse[s.level - 1] and -1.0 <= s.similarity <= 1.0 + 1e-5
            assert s.label and s.label == rec.labels[s.level - 1][s.cluster].label
        assert np.asarray(res.items[0].path).shape == (n_sem, n_think)
        assert [s.cluster for s in res.reasoning] == np.asarray(res.items[0].path).ravel().tolist()
        assert res.unknown == [] and res.reason is None
    # the step before level 1 is shared by every beam: all items agree on it
    assert len({tuple(i.path[0]) for i in results[0].items}) == 1


def test_cluster_labels_cover_every_cluster(recommender):
    table = recommender.label_table()
    n_sem = recommender.tokenizer.num_semantic_levels
    assert len(table) == sum(recommender.model.num_coarse[:n_sem])
    for level in range(1, n_sem + 1):
        rows = [r for r in table if r["level"] == level]
        assert sum(r["num_items"] for r in rows) == recommender.num_items  # clusters partition the catalog
    assert all(r["label"] and r["label"] != "(no items)" for r in table if r["num_items"])
    assert all(r["titles"] for r in table if r["num_items"])


def test_raw_ids_and_item_ids_give_the_same_result(recommender, test_rows):
    hists = [row["history"] for row in test_rows[:6]]
    by_item = recommender.recommend(hists, k=5, id_type="item_id")
    by_raw = recommender.recommend([[asin(i) for i in h] for h in hists], k=5, id_type="raw_id")
    auto_raw = recommender.recommend([" ".join(asin(i) for i in h) for h in hists], k=5)  # strings, auto
    auto_item = recommender.recommend(hists, k=5)
    for a, b, c, d in zip(by_item, by_raw, auto_raw, auto_item):
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items] == [i.item_id for i in c.items] \
            == [i.item_id for i in d.items]
        assert np.allclose([i.score for i in a.items], [i.score for i in c.items], atol=1e-5)
    assert auto_raw[0].id_type == "raw_id" and auto_item[0].id_type == "item_id"


def test_auto_refuses_to_guess_between_numeric_raw_ids_and_item_ids(recommender, test_rows):
    """A dataset whose raw ids are numbers (MovieLens' movie ids): "3" is item 3 and also the raw id of another
    item. auto must not pick a reading on a tie; an explicit id_type still works; a strict majority still decides."""
    import copy

    numeric = copy.copy(recommender)
    numeric.raw_to_item = {str(i + 1): i for i in range(1, recommender.num_items + 1)}  # raw "i+1" = item i
    hist = [i for row in test_rows[:5] for i in row["history"] if 1 < i][:4]  # "1" is no raw id here
    assert len(hist) == 4
    text = " ".join(str(i) for i in hist)
    amb, as_item, as_raw = (numeric.recommend([text], k=5, id_type=t)[0] for t in ("auto", "item_id", "raw_id"))
    assert amb.items == [] and amb.id_type == "ambiguous" and "--id-type" in amb.reason
    assert as_item.history == hist and as_raw.history == [i - 1 for i in hist]
    assert as_item.items and [i.item_id for i in as_item.items] == \
        [i.item_id for i in recommender.recommend([hist], k=5, id_type="item_id")[0].items]
    # one more id known as an item id than as a raw id ("1" is no raw id here): auto reads item ids
    more_item = numeric.recommend([["1", *map(str, hist)]], k=5)[0]
    assert more_item.id_type == "item_id" and more_item.history == [1, *hist]
    # raw ids equal to item ids name the same items: no ambiguity
    same = copy.copy(recommender)
    same.raw_to_item = {str(i): i for i in range(1, recommender.num_items + 1)}
    assert same.recommend([text], k=5)[0].items


def test_unknown_ids_are_reported_not_dropped_silently(recommender, test_rows):
    hist = [asin(i) for i in test_rows[0]["history"]]
    clean, noisy = recommender.recommend([hist, ["NOPE-1"] + hist + ["B999999999"]], k=5, id_type="raw_id")
    assert noisy.unknown == ["NOPE-1", "B999999999"] and clean.unknown == []
    assert [i.item_id for i in noisy.items] == [i.item_id for i in clean.items]
    none_known, empty = recommender.recommend([["NOPE"], []], k=5)
    assert none_known.items == [] and none_known.unknown == ["NOPE"] and "no known items" in none_known.reason
    assert none_known.id_type == "none"  # neither reading knows an id: not labelled raw_id or item_id
    assert empty.items == [] and "empty history" in empty.reason
    with pytest.raises(ServingError, match="list of histories"):
        recommender.recommend([1, 2, 3])


def test_batches_of_mixed_lengths_keep_order_and_results(recommender, test_rows):
    """recommend() searches length-sorted batches cut to their longest history: each user gets what a search of
    that user alone gives, in the callers' order."""
    histories = [row["history"] for row in test_rows[:12]]
    histories[3], histories[7] = histories[3][-1:], []  # a one-item and an empty history among the others
    assert len({len(h) for h in histories}) > 3
    together = recommender.recommend(histories, k=5, id_type="item_id", batch_size=4)
    for h, res in zip(histories, together):
        alone = recommender.recommend_one(h, k=5, id_type="item_id")
        assert res.history == alone.history and [i.item_id for i in res.items] == [i.item_id for i in alone.items]
        assert [i.score for i in res.items] == pytest.approx([i.score for i in alone.items], abs=1e-4)
    assert together[7].items == [] and "empty history" in together[7].reason


def test_long_history_keeps_the_newest_items(recommender, test_rows):
    m = recommender.max_history
    long = [(i % recommender.num_items) + 1 for i in range(m + 7)]
    a, b = recommender.recommend([long, long[-m:]], k=5, id_type="item_id")
    assert a.truncated == 7 and a.history == long[-m:] and b.truncated == 0
    assert [i.item_id for i in a.items] == [i.item_id for i in b.items]


def test_cli_recommend_table_and_json(trained_run, test_rows, capsys):
    hist = " ".join(asin(i) for i in test_rows[0]["history"])
    assert main(["recommend", str(trained_run), "--history", hist, "--k", "5"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "reasoning path" in out and "level" in out
    assert main(["recommend", str(trained_run), "--history", hist + " NOPE", "--k", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 1 and len(data[0]["items"]) == 5 and data[0]["unknown"] == ["NOPE"]
    assert {"item_id", "raw_id", "title", "score", "path"} <= set(data[0]["items"][0])
    assert data[0]["reasoning"] and data[0]["id_type"] == "raw_id"
    assert main(["recommend", str(trained_run), "--history", "NOPE ALSO-NOPE"]) == 2
    assert "no known items" in capsys.readouterr().err


def test_truncated_checkpoint_gives_a_clear_error(run_copy, capsys):
    from s2gr_ray.serving.api import Recommender, ServingError

    weights = run_copy / "model" / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ServingError, match=r"model\.pt cannot be read.*corrupted or truncated"):
        Recommender.load(run_copy, device="cpu")
    assert main(["recommend", str(run_copy), "--history", "1 2"]) == 2
    assert "corrupted or truncated" in capsys.readouterr().err
    (run_copy / "model" / "model.pt").unlink()
    with pytest.raises(ServingError, match="no trained model"):
        Recommender.load(run_copy, device="cpu")


@pytest.mark.parametrize("edit", ["tokenizer_hash", "level_sizes", "tokenizer_manifest"])
def test_mismatched_tokenizer_is_refused(run_copy, edit):
    from s2gr_ray.serving.api import Recommender, ServingError

    sig_path = run_copy / "model" / "signature.json"
    sig = json.loads(sig_path.read_text())
    if edit == "tokenizer_hash":
        sig["tokenizer_hash"] = "0123456789abcdef"
    elif edit == "level_sizes":
        sig["level_sizes"] = [s + 1 for s in sig["level_sizes"]]
    if edit == "tokenizer_manifest":  # the tokenizer was rebuilt after training: its hash changed
        man_path = run_copy / "tokenizer" / "manifest.json"
        man = json.loads(man_path.read_text())
        man["hash"] = "fedcba9876543210"
        man_path.write_text(json.dumps(man))
    else:
        sig_path.write_text(json.dumps(sig))
    field = "level_sizes" if edit == "level_sizes" else "tokenizer_hash"
    with pytest.raises(ServingError, match=f"tokenizer/model mismatch.*{field}.*retrain"):
        Recommender.load(run_copy, device="cpu")


@pytest.mark.parametrize("path,edit,match", [
    ("model/signature.json", lambda sig: [1], r"signature\.json holds list, not a JSON object"),
    ("model/signature.json", lambda sig: {k: v for k, v in sig.items() if k != "model"},
     r"signature\.json: 'model' is missing: the file is damaged"),
    ("model/signature.json", lambda sig: {**sig, "max_history": "x"},
     r"signature\.json: 'max_history' is 'x', not an integer"),
    ("model/manifest.json", lambda man: {**man, "upstream": []}, r"model/manifest\.json: 'upstream' is \[\], not a "
     r"JSON object: the file is damaged.*s2gr train CONFIG --out .*run"),
    ("tokenizer/manifest.json", lambda man: {k: v for k, v in man.items() if k != "hash"},
     r"tokenizer/manifest\.json: 'hash' is missing.*s2gr tokenize CONFIG --out "),
    ("manifest.json", lambda man: {**man, "hash": 7}, r"run/manifest\.json: 'hash' is 7, not a string.*s2gr prepare"),
])
def test_damaged_records_are_named_not_tracebacks(run_copy, path, edit, match):
    from s2gr_ray.artifacts import ArtifactError
    from s2gr_ray.serving.api import Recommender, ServingError

    record = run_copy / path
    record.write_text(json.dumps(edit(json.loads(record.read_text()))))
    with pytest.raises(ServingError if path.endswith("signature.json") else ArtifactError, match=match):
        Recommender.load(run_copy, device="cpu")


def test_python_api_arguments_are_checked(recommender, test_rows):
    from s2gr_ray.serving.api import ServingError

    history = test_rows[0]["history"]
    for bad in (2.5, "5", True, 0):
        with pytest.raises(ServingError, match=r"k = .* must be a whole number >= 1"):
            recommender.recommend([history], k=bad, id_type="item_id")
    with pytest.raises(ServingError, match=r"batch_size = 0 must be a whole number >= 1"):
        recommender.recommend([history], k=5, id_type="item_id", batch_size=0)
    from_generator = recommender.recommend((h for h in [history, None]), k=5, id_type="item_id")
    alone = recommender.recommend_one(history, k=5, id_type="item_id")
    assert [i.item_id for i in from_generator[0].items] == [i.item_id for i in alone.items]
    assert from_generator[1].items == [] and "empty history" in from_generator[1].reason  # None: no ids
    n = recommender.num_items
    with pytest.warns(UserWarning, match=f"k = {n + 5} is more than the catalog's {n} items"):
        everything = recommender.recommend_one(history, k=n + 5, id_type="item_id")
    assert len(everything.items) <= n
