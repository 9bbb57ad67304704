"""The HTTP walkthrough that ends `recstack demo`: real calls to the running service.

Each call prints its method and path, the status and a compact result (titles, the arm, the
model version and, with explain, "because you watched X"). The calls: a known user's top 10
(and a user of the other A/B arm), the user's impressions and clicks as events -> the next
list changes at once, an anonymous session from `recent_items`, a cold user (popularity
fallback), similar items, a bad request (422) and the A/B report (admin key). Plain urllib:
the demo runs on a bare `pip install -e .`.
"""

import json
import time
import urllib.error
import urllib.request

from rich.markup import escape
from rich.table import Table

from recstack.errors import RecstackError
from recstack.progress import console
from recstack.serving.experiments import Experiment, assign

STAR_WARS, RETURN_OF_THE_JEDI = "50", "181"
ML100K_USERS = range(1, 944)


class Client:
    """JSON over HTTP with a bearer key; prints `METHOD path -> status` for every call."""

    def __init__(self, url: str, app_key: str, admin_key: str) -> None:
        self.url, self.app_key, self.admin_key = url, app_key, admin_key

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        admin: bool = False,
        note: str = "",
        expect: int | None = 200,
    ) -> tuple[int, dict]:
        """One request; prints the method, path, body (or `note` for a long one) and status.
        A status other than `expect` raises RecstackError with the service's message."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.admin_key if admin else self.app_key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"error": raw.decode(errors="replace")}
        shown = note or ("" if body is None else json.dumps(body, separators=(",", ":")))
        shown = "  ".join(part for part in (shown, "(admin key)" if admin else "") if part)
        console.print(
            f"[bold cyan]{method} {path}[/bold cyan]  [dim]{escape(shown)}[/dim]"
            f"{'  ' if shown else ''}-> [bold]{status}[/bold]"
        )
        if expect is not None and status != expect:
            raise RecstackError(f"{method} {path} answered {status}: {payload.get('error')}")
        return status, payload


def _reason(item: dict) -> str:
    reason = item.get("reason") or {}
    if reason.get("kind") == "similar_to_history":
        return f"because you watched {reason['title']} ({reason['similarity']:.2f})"
    return reason.get("text") or ""


def _score(score: float) -> str:
    return f"{score:.0f}" if abs(score) >= 100 else f"{score:.3f}"  # popularity: event counts


def show(body: dict, title: str) -> None:
    """The items of a recommend/similar response as a table, then the response's labels."""
    reasons = [_reason(item) for item in body["items"]]
    columns = ("#", "item", "title", "score", "reason")[: 5 if any(reasons) else 4]
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for n, (item, reason) in enumerate(zip(body["items"], reasons, strict=True), 1):
        row = [str(n), item["item_id"], item.get("title") or "", _score(item["score"]), reason]
        table.add_row(*row[: len(columns)])
    console.print(table)
    labels = ("arm", "model_version", "fallback", "personalised_from")
    console.print("  ".join(f"{k}=[bold]{body[k]}[/bold]" for k in labels if k in body))


def first_user(experiment: Experiment, kind: str, candidates) -> str:
    """The first id among `candidates` that the experiment assigns to an arm of `kind`."""
    found = next((str(u) for u in candidates if assign(experiment, str(u)).kind == kind), None)
    if found is None:
        raise RecstackError(f"experiment {experiment.name!r} has no {kind} arm for the demo")
    return found


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def _event(user: str, item: str, kind: str, ts: int, shown_in: dict) -> dict:
    """An event as the client logs it: with the request id and model version of the list it
    came from (the A/B report attributes clicks to the list by request_id)."""
    return {
        "user_id": user,
        "item_id": item,
        "type": kind,
        "ts": ts,
        "model_version": shown_in["model_version"],
        "request_id": shown_in["request_id"],
    }


def walkthrough(url: str, app_key: str, admin_key: str, experiment: Experiment) -> dict:
    """Call every main endpoint once and print the results; returns them (for tests)."""
    client, out = Client(url, app_key, admin_key), {"url": url}

    def recommend(body: dict) -> dict:
        return client.call("POST", "/v1/recommend", body)[1]

    console.rule("6a. recommend for ML-100K user 1 (explain=true), and a user of the other arm")
    out["user_1"] = recommend({"user_id": "1", "k": 10, "explain": True})
    show(out["user_1"], "user 1: top 10")
    arm_1 = assign(experiment, "1")
    other = "popularity" if arm_1.kind == "model" else "model"
    other_user = first_user(experiment, other, ML100K_USERS)
    console.print(
        f"A/B experiment {experiment.name!r} (hash of user id and salt): user 1 is in arm "
        f"{arm_1.name!r}, user {other_user} in the {other} arm"
    )
    k = 10 if other == "model" else 5
    out["other_arm"] = recommend({"user_id": other_user, "k": k, "explain": True})
    show(out["other_arm"], f"user {other_user}: top {k} ({other} arm)")
    user, before = ("1", out["user_1"]) if other != "model" else (other_user, out["other_arm"])
    out["model_user"] = user

    console.rule(f"6b. events: user {user} saw the list and clicked 2 movies -> new list at once")
    now, clicked = int(time.time()), ids(before)[:2]
    events = [_event("1", i, "impression", now, out["user_1"]) for i in ids(out["user_1"])]
    events += [
        _event(other_user, i, "impression", now, out["other_arm"]) for i in ids(out["other_arm"])
    ]
    events += [_event(user, i, "click", now + 1 + n, before) for n, i in enumerate(clicked)]
    note = f"{len(events) - 2} impressions (users 1 and {other_user}), clicks on {clicked}"
    status, body = client.call("POST", "/v1/events", {"events": events}, note=note, expect=202)
    out["events"] = {"status": status, **body}
    console.print(body)
    out["after_events"] = recommend({"user_id": user, "k": 10, "explain": True})
    show(out["after_events"], f"user {user}: top 10 right after the clicks")
    after = ids(out["after_events"])
    console.print(
        f"{len(set(after) - set(ids(before)))} of 10 items are new; the clicked movies are "
        f"{'gone' if not set(clicked) & set(after) else 'still there'}"
    )

    console.rule("6c. an anonymous session: recent_items = Star Wars, Return of the Jedi")
    body = {"k": 10, "recent_items": [STAR_WARS, RETURN_OF_THE_JEDI], "explain": True}
    out["anonymous"] = recommend(body)
    show(out["anonymous"], "anonymous session: top 10")

    console.rule("6d. a new user without history: the cold-start fallback")
    cold = first_user(experiment, "model", (f"demo-new-user-{n}" for n in range(1, 1000)))
    out["cold"] = recommend({"user_id": cold, "k": 5, "explain": True})
    show(out["cold"], f"{cold}: top 5")

    console.rule("6e. similar items (cosine of the ranker's item embeddings)")
    out["similar"] = client.call("GET", f"/v1/similar/{STAR_WARS}?k=5")[1]
    show(out["similar"], "similar to Star Wars: top 5")

    console.rule("6f. a bad request: k=0")
    status, body = client.call("POST", "/v1/recommend", {"user_id": "1", "k": 0}, expect=None)
    out["bad_request"] = {"status": status, **body}
    console.print(body)

    console.rule("6g. the A/B report (admin key)")
    out["report"] = client.call("GET", "/v1/experiments/report", admin=True)[1]
    _show_report(out["report"])
    return out


def _show_report(report: dict) -> None:
    table = Table(
        title=f"experiment {report['experiment']!r} (control: {report['control']})",
        title_justify="left",
    )
    for column in ("arm", "kind", "weight", "users", "impressions", "clicks", "CTR", "95 % CI"):
        table.add_column(column, justify="left" if column in ("arm", "kind") else "right")
    for name, arm in report["arms"].items():
        ci = arm["ctr_ci"]
        table.add_row(
            name,
            arm["kind"] or "",
            f"{arm['weight']:.2f}" if arm["weight"] is not None else "",
            str(arm["users"]),
            str(arm["impressions"]),
            str(arm["clicks"]),
            f"{arm['ctr']:.3f}" if arm["ctr"] is not None else "-",
            f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
        )
    console.print(table)
    for name, arm in report["arms"].items():
        diff = arm.get("vs_control")
        if diff and diff["ci"]:
            console.print(
                f"{name} - {report['control']}: CTR {diff['diff']:+.3f} "
                f"(95 % CI {diff['ci'][0]:+.3f} to {diff['ci'][1]:+.3f}, p = {diff['p_value']:.2f})"
            )
    console.print(f"{report['events']} events in the log: a handful of demo events decide nothing")
