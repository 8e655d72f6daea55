"""Rendering answers for the terminal: a table per query, or JSON for programs."""

from __future__ import annotations

import json

from search.service import Answer, Asked, Grouping, Query, Result
from search.store import schema


def _columns(group: Grouping) -> tuple[str, ...]:
    """rank, score (and the garment's matching photos), then the schema's table columns."""
    return ("rank", "score", *(["photos"] if group is Grouping.item else []), *schema.COLUMNS)


def _cell(value) -> str:
    """One table cell on one line: control characters (a newline in a file name) escaped."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def table(results: list[Result], group: Grouping = Grouping.none) -> list[str]:
    columns = _columns(group)
    rows = [
        [
            str(r.rank),
            f"{r.hit.score:.4f}",
            *([str(r.matches)] if group is Grouping.item else []),
            *(_cell(r.hit.payload.get(c, "")) for c in schema.COLUMNS),
        ]
        for r in results
    ]
    widths = [
        max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*columns), *(fmt.format(*r) for r in rows)]


def result_dict(result: Result, group: Grouping = Grouping.none) -> dict:
    """A result as plain data: rank, id, score, the payload; grouped: matches and photos."""
    out = {"rank": result.rank, "id": result.hit.id, "score": result.hit.score}
    out.update(result.hit.payload)
    if group is Grouping.item:
        out["matches"] = result.matches
        out["photos"] = [{"id": h.id, "score": h.score, **h.payload} for h in result.photos]
    return out


def to_json(answers: list[Answer], group: Grouping = Grouping.none) -> str:
    return json.dumps(
        [
            {
                "query": a.query,
                **({"item_id": a.item_id} if a.item_id else {}),
                "results": [result_dict(r, group) for r in a.results],
            }
            for a in answers
        ],
        indent=1,
    )


def heading(answer: Answer, filters: dict, group: Grouping) -> str:
    what = "garments" if group is Grouping.item else "results"
    label = {
        Asked.recommend: "like the liked photos, unlike the others",
        Asked.similar: f"like {answer.query}",
    }.get(answer.asked, answer.query)
    conditions = f" ({', '.join(f'{k}={v}' for k, v in filters.items())})" if filters else ""
    return f"query {label}: {len(answer.results)} {what}{conditions}"


def model_line(metadata: dict, seconds: float) -> str:
    model = metadata["model"]
    untrained = (
        "  (UNTRAINED: random weights, results are not meaningful)"
        if model["weights"] == "none"
        else ""
    )
    return f"model {model['backbone']} weights {model['weights']}{untrained}; {seconds:.2f}s"


def answers_text(answers: list[Answer], query: Query, metadata: dict, seconds: float) -> list[str]:
    """The terminal's answer: a heading and a table per query, then the model line."""
    out = []
    for answer in answers:
        out.append(heading(answer, dict(query.filters), query.group))
        out.extend(table(answer.results, query.group))
    return [*out, model_line(metadata, seconds)]
