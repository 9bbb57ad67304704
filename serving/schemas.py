"""Request and response bodies of the HTTP API (pydantic v2; the OpenAPI schema at /docs).

Requests forbid unknown fields and bound every size, so a bad request gets a 422 that names
the field, never a 500 or a replica stuck on a huge payload.
"""

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from recstack.event_log_format import EVENT_TYPES, MAX_EVENT_VALUE
from recstack.schema import TS

MAX_K = 1000
MAX_HISTORY = 1000  # items in an explicit history / exclude list / onboarding list
MAX_EVENTS = 1000  # events per POST /v1/events
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MAX_TS = 2**40  # seconds since the epoch: any real clock, and far inside int64
MAX_CONTEXT_NUMBER = 1e15  # a context number's bound (ints up to it are exact as float64 too)


def _context_value(value: object) -> object:
    """A context value: a string, a finite bounded number, true/false or null. JSON's NaN and
    Infinity and huge numbers are refused here with a 422 naming the field, never deep in a
    model's input coding (a 500 for the request, and on Ray for its batch neighbours)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= 128:
        return value
    if isinstance(value, int | float) and abs(value) <= MAX_CONTEXT_NUMBER:  # NaN fails this
        return value
    raise PydanticCustomError(
        "context_value",
        "must be a string of at most 128 characters, a finite number within ±1e15, true/false "
        "or null (got {value})",
        {"value": repr(value)[:32]},
    )


_ContextNumber = Field(ge=-MAX_CONTEXT_NUMBER, le=MAX_CONTEXT_NUMBER)
ContextValue = Annotated[
    str | bool | int | float | None,
    PlainValidator(
        _context_value,
        json_schema_input_type=Annotated[str, StringConstraints(max_length=128)]
        | bool
        | Annotated[int, _ContextNumber]
        | Annotated[float, _ContextNumber]
        | None,
    ),
]


def _check_ts(context: dict) -> dict:
    """`ts` (the request's time: hour and weekday features) is whole seconds, 0..MAX_TS."""
    ts = context.get(TS)
    if ts is not None and (type(ts) is not int or not 0 <= ts <= MAX_TS):
        raise PydanticCustomError(
            "context_ts",
            "ts must be whole seconds since the epoch (UTC), 0..{max}, got {ts}",
            {"max": MAX_TS, "ts": repr(ts)[:32]},
        )
    return context


Context = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], ContextValue],
    Field(max_length=32),
    AfterValidator(_check_ts),
]
Fallback = Literal["cold_start", "opted_out", "store_unavailable"]
EventType = Literal[EVENT_TYPES]  # the event log's types, one list


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Strict):
    user_id: Id | None = Field(
        None, description="omit for an anonymous session (give recent_items)"
    )
    k: int = Field(10, ge=1, le=MAX_K, description="how many items to return")
    context: Context = Field(
        default_factory=dict, description='e.g. {"device": "mobile", "ts": 1700000000}'
    )
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY)
    recent_items: list[Id] | None = Field(
        None,
        max_length=MAX_HISTORY,
        description="explicit history, oldest first (anonymous sessions)",
    )
    explain: bool = False


class Reason(BaseModel):
    kind: Literal["similar_to_history", "popular"]
    because_of: str | None = None
    title: str | None = None
    similarity: float | None = None
    text: str | None = None


class Item(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    reason: Reason | None = None


class RecommendResponse(BaseModel):
    items: list[Item]
    arm: str
    model_version: str
    fallback: Fallback | None = Field(
        None, description="set whenever the result is not personalised by the model"
    )
    personalised_from: Literal["history", "request", "onboarding"] | None = None
    unknown_items: int = Field(0, description="history ids not in the model's catalogue (ignored)")
    request_id: str


class SimilarResponse(BaseModel):
    item_id: str
    items: list[Item]
    model_version: str
    request_id: str


class Event(Strict):
    user_id: Id
    item_id: Id
    type: EventType
    ts: int = Field(ge=0, le=MAX_TS, description="event time, seconds since the epoch (UTC)")
    context: Context | None = None
    request_id: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None,
        description="the request_id of the recommend response whose list was shown: ties an "
        "impression and its clicks and purchases to that list (the A/B report's attribution)",
    )
    model_version: Annotated[str, StringConstraints(max_length=128)] | None = None
    value: (
        Annotated[float, Field(ge=0, le=MAX_EVENT_VALUE, allow_inf_nan=False, strict=True)] | None
    ) = Field(
        None,
        description="optional amount (a purchase's value, a watch time): a finite "
        "number 0..1e9; NaN, infinities, negatives and true/false get a 422",
    )


class EventsRequest(Strict):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsResponse(BaseModel):
    accepted: int
    dropped_no_consent: int
    history_updated: bool = Field(
        description="false when the online store was unreachable; the log has them"
    )


class Consent(Strict):
    personalization: bool = Field(True, description="use this user's history to personalise")
    tracking: bool = Field(True, description="store this user's events")


class Onboarding(Strict):
    items: list[Id] = Field(
        min_length=1, max_length=MAX_HISTORY, description="items the user likes"
    )


class OnboardingResponse(BaseModel):
    stored: int
    unknown_items: int


class DataLocation(BaseModel):
    place: Literal["online_store", "event_log", "seed_dataset", "artifact"]
    path: str | None = Field(None, description="the event log, dataset or artifact directory")
    holds_user: bool | None = Field(
        description="whether it holds the user's data now; null: not checked by this replica"
    )
    note: str | None = Field(None, description="what it holds, or how to remove the user")


class ErasureResponse(BaseModel):
    user_id: str
    erased_online_state: bool
    event_log_tombstoned: bool
    locations: list[DataLocation] = Field(
        description="every place checked, after the erasure; `note` names the command that "
        "removes the user from a place that still holds them"
    )
    complete: bool = Field(description="true when no place holds the user any more")


class UserData(BaseModel):
    user_id: str
    history: list[str]
    consent: dict[str, bool] | None
    onboarding: list[str]
    events: list[dict]
    locations: list[DataLocation] = Field(description="every place that holds the user's data")


class ErrorBody(BaseModel):
    error: str


ArtifactDir = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class ModelUpdate(Strict):
    retriever: dict[Id, ArtifactDir] = Field(default_factory=dict, max_length=16)
    ranker: dict[Id, ArtifactDir] = Field(default_factory=dict, max_length=16)


class ModelUpdateResponse(BaseModel):
    generation: int
    retriever: dict[str, str]
    ranker: dict[str, str]
    note: str


class ReplicaModels(BaseModel):
    replica: str = Field(description="host:pid of the uvicorn worker or Ray replica")
    models_from: Literal["last_published", "config"]
    started: str = Field(description="how its models were chosen at its start")
    generation: int | None = Field(description="the published spec generation it follows")
    models: dict[str, dict[str, str]] = Field(description="side -> {model name: version}")
    errors: dict[str, dict[str, str]] = Field(description="side -> {model name: load error}")
    seen_s_ago: float = Field(description="since its last report (every 5 s)")


class ServedModels(BaseModel):
    published: dict | None = Field(description="the spec in the store: generation, per side")
    replicas: list[ReplicaModels] = Field(description="every replica seen in the last 30 s")


class Readiness(BaseModel):
    status: Literal["ready"]
    replicas: list[ReplicaModels] | None = Field(
        None, description="with a models key: what every replica serves"
    )
