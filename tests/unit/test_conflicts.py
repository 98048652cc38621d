"""Reading any stored revision (readdoc(id, rev=...)) and resolving a conflict in one step (resolve)."""

from __future__ import annotations

from pathlib import Path

import pytest

import MyNoSQL
from MyNoSQL.records import revtree
from MyNoSQL.records.codec import encode_body


def conflicted(db: MyNoSQL.MyNoSQL) -> tuple[dict[str, object], str]:
    """A record "c" whose winner and one loser both descend from its first revision (as two offline peers make
    them); returns the first revision as saved and the loser's revision id."""
    base = db.savedoc({"id": "c", "score": 1, "by": "start"})
    mine = db.savedoc({**base, "score": 2, "by": "me"})
    blob = encode_body({"score": 7, "by": "them"})[0]
    theirs = revtree.new_rev(base["rev"], False, blob)
    assert db.db.put_replicated("c", [theirs, base["rev"]], False, blob)  # as replication would graft it
    winner = db.readdoc("c")["rev"]
    loser = theirs if winner == mine["rev"] else mine["rev"]
    assert db.conflicts("c") == [loser]
    return base, loser


def test_readdoc_of_a_losing_revision_gives_its_content(db: MyNoSQL.MyNoSQL) -> None:
    _, loser = conflicted(db)
    winner = db.readdoc("c")
    lost = db.readdoc("c", rev=loser)
    assert lost["rev"] == loser and {lost["by"], winner["by"]} == {"me", "them"}
    assert db.readdoc("c", rev=winner["rev"]) == winner
    lost["by"] = "changed"  # the caller's own dict
    assert db.readdoc("c", rev=loser)["by"] != "changed"


def test_readdoc_of_a_revision_not_stored_says_why(db: MyNoSQL.MyNoSQL) -> None:
    base, loser = conflicted(db)
    with pytest.raises(MyNoSQL.DocumentNotFound, match="not stored"):
        db.readdoc("c", rev=str(base["rev"]))  # an ancestor: only leaves keep their content (as CouchDB)
    with pytest.raises(MyNoSQL.DocumentNotFound, match="has no revision"):
        db.readdoc("c", rev="9-" + "0" * 32)
    gone = db.deletedoc("c", loser)
    with pytest.raises(MyNoSQL.DocumentNotFound, match="is a deletion") as err:
        db.readdoc("c", rev=gone["rev"])
    assert err.value.deleted and isinstance(err.value, KeyError)
    with pytest.raises(MyNoSQL.DocumentNotFound):
        db.readdoc("nothing", rev=str(base["rev"]))


def test_resolve_saves_the_merge_and_deletes_the_losers_in_one_step(db: MyNoSQL.MyNoSQL) -> None:
    _, loser = conflicted(db)
    winner = db.readdoc("c")
    lost = db.readdoc("c", rev=loser)
    seq = db.db.seq
    merged = db.resolve("c", {**winner, "score": winner["score"] + lost["score"], "by": "both"})
    assert merged == db.readdoc("c") and merged["score"] == 9 and merged["by"] == "both"
    assert revtree.rev_gen(merged["rev"]) == revtree.rev_gen(winner["rev"]) + 1
    assert db.conflicts("c") == []
    assert db.db.seq == seq + 1  # one write: the merge and the deletions are one change
    state = db.db.state("c")
    assert state is not None and sorted(revtree.leaves(state.tree)) == sorted(
        [merged["rev"], *[r for r in state.tree if state.tree[r] == (loser, True)]])


def test_resolve_refuses_a_stale_winner_or_a_wrong_loser_and_writes_nothing(db: MyNoSQL.MyNoSQL) -> None:
    _, loser = conflicted(db)
    winner = db.readdoc("c")
    seq = db.db.seq
    with pytest.raises(MyNoSQL.ConflictError, match="changed since you read it"):
        db.resolve("c", {**winner, "rev": "9-" + "0" * 32})
    with pytest.raises(MyNoSQL.ConflictError, match="not a conflicting revision"):
        db.resolve("c", winner, losers=[winner["rev"]])
    with pytest.raises(MyNoSQL.InvalidDocument):
        db.resolve("c", {**winner, "id": "other"})
    assert db.db.seq == seq and db.conflicts("c") == [loser] and db.readdoc("c") == winner
    # keeping the winner's content and only dropping the loser is a resolution too
    kept = db.resolve("c", winner, losers=[loser])
    assert kept["rev"] == winner["rev"] and db.conflicts("c") == []


def test_resolve_survives_reopen(location: Path) -> None:
    with MyNoSQL.MyNoSQL(location) as h:
        h.opendb("r")
        conflicted(h)
        merged = h.resolve("c", {"score": 0, "by": "merge"})
    with MyNoSQL.MyNoSQL(location) as h:
        h.opendb("r")
        assert h.readdoc("c") == merged and h.conflicts("c") == []
