"""Column names, file names and constants shared by every stage (docs/architecture.md §3, §4).

Import names from here; never spell a column as a string literal elsewhere.
"""

SCHEMA_VERSION = 1  # bump when the dataset-dir layout changes; readers refuse newer ones

PAD_IDX = 0  # item_idx 0 is padding; real items are 1..n_items. Users are 0..n_users-1.

# --- raw log columns (what every source produces) ---
USER_ID = "user_id"  # external id, int or string as given
ITEM_ID = "item_id"
TS = "ts"  # int64 seconds since the epoch, UTC
RATING = "rating"  # optional, float32
ROW = "row"  # original row order in the raw log (stable tie-break for equal timestamps)
DEVICE = "device"  # context column: mobile / desktop / tv ... (synthetic logs, serving context)

# --- serving event log columns (recstack.serving.event_log), besides USER_ID, ITEM_ID, TS ---
EVENT_TYPE = "type"  # view / click / purchase / impression / rating
RECEIVED_AT = "received_at"  # int64 milliseconds since the epoch, server time
ARM = "arm"  # experiment arm that produced the recommendation, null if none
MODEL_VERSION = "model_version"
REQUEST_ID = "request_id"
CONTEXT = "context"  # JSON text of the request's context dict
VALUE = "value"  # float64, optional: a purchase's amount, a watch time (>= 0, bounded)

# --- prepared dataset columns ---
USER_IDX = "user_idx"  # int32, dense 0..n_users-1
ITEM_IDX = "item_idx"  # int32, dense 1..n_items (PAD_IDX = 0 is never an item)
SPLIT_LOO = "split_loo"  # int8 split code, leave-one-out by time per user
SPLIT_TEMPORAL = "split_temporal"  # int8 split code, one global time cut
SPLIT_COLUMNS = (SPLIT_LOO, SPLIT_TEMPORAL)
SPLITS = {"loo": SPLIT_LOO, "temporal": SPLIT_TEMPORAL}  # split name -> its stored column
SPLIT = "split"  # the column an evaluation reads: the chosen split's codes (§5)

# split codes stored in the split columns
TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}

# --- item catalogue / user attribute columns produced by the MovieLens parsers ---
TITLE = "title"
GENRES = "genres"  # list[str]
YEAR = "year"  # int16 release year, null if unknown
GENDER = "gender"
AGE = "age"
OCCUPATION = "occupation"
ZIP = "zip"

# --- files in a prepared dataset dir ---
INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"  # item_idx, item_id, features; row i holds item_idx i + 1
USERS_FILE = "users.parquet"  # user_idx, user_id, attributes; row i holds user_idx i
QUALITY_FILE = "quality_report.json"
MANIFEST_FILE = "manifest.json"
