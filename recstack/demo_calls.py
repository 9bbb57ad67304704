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

from rich.table import Table

from recstack.progress import console
from recstack.serving.experiments import Experiment, assign

STAR_WARS, RETURN_OF_THE_JEDI = "50", "181"
ML100K_USERS = range(1, 944)


class Client:
    """JSON over HTTP with a bearer key; prints `METHOD path -> status` for every call."""

    def __init__(self, url: str, app_key: str, admin_key: str) -> None:
        self.url, self.app_key, self.admin_key = url, app_key, admin_key

    def call(self, method: str, path: str, body: dict | None = None, admin: bool = False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.admin_key if admin else self.app_key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload = response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, json.loads(exc.read() or b"{}")
        shown = f"  [dim]{json.dumps(body, separators=(',', ':'))[:110]}[/dim]" if body else ""
        key = "  [dim](admin key)[/dim]" if admin else ""
        console.print(
            f"[bold cyan]{method} {path}[/bold cyan]{shown}{key} -> [bold]{status}[/bold]"
        )
        return status, payload


def _reason(item: dict) -> str:
    reason = item.get("reason") or {}
    if reason.get("kind") == "similar_to_history":
        return f"because you watched {reason['title']} ({reason['similarity']:.2f})"
    return reason.get("text") or ""


def show(body: dict, title: str) -> None:
    """The items of a recommend/similar response as a table, with the response's labels."""
    labels = {k: body.get(k) for k in ("arm", "model_version", "fallback", "personalised_from")}
    caption = "  ".join(f"{k}={v}" for k, v in labels.items() if k in body)
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for column in ("#", "item", "title", "score", "reason"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for n, item in enumerate(body["items"], 1):
        table.add_row(
            str(n), item["item_id"], item.get("title") or "", f"{item['score']:.3f}", _reason(item)
        )
    console.print(table)


def first_user(experiment: Experiment, kind: str, candidates) -> str:
    """The first id among `candidates` that the experiment assigns to an arm of `kind`."""
    return next(str(u) for u in candidates if assign(experiment, str(u)).kind == kind)


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def walkthrough(url: str, app_key: str, admin_key: str, experiment: Experiment) -> dict:
    """Call every main endpoint once, print the results; returns them for tests."""
    client, out = Client(url, app_key, admin_key), {"url": url}

    def recommend(body: dict):
        return client.call("POST", "/v1/recommend", body)

    console.rule("6a. recommend for ML-100K user 1 (explain=true)")
    _, out["user_1"] = recommend({"user_id": "1", "k": 10, "explain": True})
    show(out["user_1"], "user 1: top 10")
    arm_1 = assign(experiment, "1")
    other = "popularity" if arm_1.kind == "model" else "model"
    user = "1" if arm_1.kind == "model" else first_user(experiment, "model", ML100K_USERS)
    other_user = first_user(experiment, other, ML100K_USERS)
    console.print(
        f"A/B experiment {experiment.name!r}: user 1 is in arm {arm_1.name!r}; user "
        f"{other_user} is in the {other} arm:"
    )
    _, out["other_arm"] = recommend({"user_id": other_user, "k": 5, "explain": True})
    show(out["other_arm"], f"user {other_user}: top 5 ({other} arm)")
    before = out["user_1"] if user == "1" else out["other_arm"]
    out["model_user"] = user

    console.rule(f"6b. events: user {user} saw the list and clicked 2 movies -> new list at once")
    now = int(time.time())
    shown = [(user, before), (other_user, out["other_arm"])]
    events = [
        {
            "user_id": u,
            "item_id": i,
            "type": "impression",
            "ts": now,
            "model_version": b["model_version"],
        }
        for u, b in shown
        for i in ids(b)
    ]
    clicked = ids(before)[:2]
    events += [
        {
            "user_id": user,
            "item_id": i,
            "type": "click",
            "ts": now + 1 + n,
            "model_version": before["model_version"],
        }
        for n, i in enumerate(clicked)
    ]
    status, out["events"] = client.call("POST", "/v1/events", {"events": events})
    console.print(f"{status}: {out['events']}  (clicked {clicked})")
    _, out["after_events"] = recommend({"user_id": user, "k": 10, "explain": True})
    show(out["after_events"], f"user {user}: top 10 right after the clicks")
    new = [i for i in ids(out["after_events"]) if i not in ids(before)]
    console.print(
        f"{len(new)} of 10 items are new; the clicked movies are gone: "
        f"{not set(clicked) & set(ids(out['after_events']))}"
    )

    console.rule("6c. an anonymous session: recent_items = Star Wars, Return of the Jedi")
    body = {"k": 10, "recent_items": [STAR_WARS, RETURN_OF_THE_JEDI], "explain": True}
    _, out["anonymous"] = recommend(body)
    show(out["anonymous"], "anonymous session: top 10")

    console.rule("6d. a cold user (no history): the popularity fallback")
    cold = first_user(experiment, "model", (f"demo-new-user-{n}" for n in range(1, 1000)))
    _, out["cold"] = recommend({"user_id": cold, "k": 5, "explain": True})
    show(out["cold"], f"{cold}: top 5")

    console.rule("6e. similar items (the ranker's item embeddings)")
    _, out["similar"] = client.call("GET", f"/v1/similar/{STAR_WARS}?k=5")
    show(out["similar"], f"similar to {STAR_WARS}: top 5")

    console.rule("6f. a bad request: k=0")
    status, body = recommend({"user_id": "1", "k": 0})
    out["bad_request"] = {"status": status, **body}
    console.print(f"{status}: {body.get('error')}")

    console.rule("6g. the A/B report (admin key)")
    _, out["report"] = client.call("GET", "/v1/experiments/report", admin=True)
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
    console.print(
        f"{report['events']} events in the log; a handful of demo events decide nothing "
        "(see the intervals)"
    )
