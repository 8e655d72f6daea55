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


def by_photo(answers: list[Answer]) -> list[list[Answer]]:
    """The answers of each query photo together (a photo searched garment by garment has one
    answer per garment), in order."""
    photos: list[list[Answer]] = []
    for answer in answers:
        if photos and _garments(photos[-1][0]) and photos[-1][0].query == answer.query:
            photos[-1].append(answer)
        else:
            photos.append([answer])
    return photos


def _garments(answer: Answer) -> bool:
    """Whether the answer is one of a photo searched garment by garment."""
    return answer.garment is not None or answer.notice is not None


def garment_dict(answer: Answer, group: Grouping) -> dict:
    """A garment of a photo as plain data: box, type, score, results (a photo with no garment
    found: its whole, with type and score null)."""
    g = answer.garment
    found = g.to_dict() if g else {"box": None, "type": None, "score": None}
    return {**found, "results": [result_dict(r, group) for r in answer.results]}


def to_json(answers: list[Answer], group: Grouping = Grouping.none) -> str:
    """Per query: its results, or, searched garment by garment, its `garments` (each with its
    box, type, score and results) and any notice."""
    entries = []
    for photo in by_photo(answers):
        first = photo[0]
        entry = {"query": first.query, **({"item_id": first.item_id} if first.item_id else {})}
        if _garments(first):
            entry["garments"] = [garment_dict(a, group) for a in photo]
            if first.notice:
                entry["notice"] = first.notice
        else:
            entry["results"] = [result_dict(r, group) for r in first.results]
        entries.append(entry)
    return json.dumps(entries, indent=1)


def heading(answer: Answer, filters: dict, group: Grouping) -> str:
    what = "garments" if group is Grouping.item else "results"
    label = {
        Asked.recommend: "like the liked photos, unlike the others",
        Asked.similar: f"like {answer.query}",
    }.get(answer.asked, answer.query)
    if (g := answer.garment) is not None:
        label += f", {g.type}-body garment at {','.join(map(str, g.box))} (score {g.score:.2f})"
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
        if answer.notice:
            out.append(f"{answer.query}: {answer.notice}")
        out.append(heading(answer, dict(query.filters), query.group))
        out.extend(table(answer.results, query.group))
    return [*out, model_line(metadata, seconds)]
