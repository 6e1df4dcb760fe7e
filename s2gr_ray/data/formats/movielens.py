"""① ``data.format=movielens``: the GroupLens MovieLens releases as unzipped.

Layouts (``data.movielens_layout``; ``auto`` picks the one whose files are in ``data.path``, or in its only
matching sub-folder, so the folder the zip extracts to works either way):
- ``ml-100k``: ``u.data`` (tab-separated ``user item rating timestamp``), ``u.item`` ('|'-separated: id, title,
  release date, video release date, IMDb URL, one 0/1 flag per genre), ``u.genre`` (``name|index``; the
  standard 19 names are used when it is absent).
- ``ml-1m`` (also ml-10m): ``ratings.dat`` (``user::item::rating::timestamp``), ``movies.dat``
  (``id::title::Genre|Genre``).
- ``ml-latest`` (also ml-latest-small, ml-20m, ml-25m, ml-32m): ``ratings.csv``, ``movies.csv`` with a header
  row, UTF-8, quoted titles.

Encoding: the ml-100k and ml-1m files are ISO-8859-1 (latin-1) — e.g. 'Misérables' is byte 0xE9 — so they are
decoded as latin-1, which never fails (a UTF-8 file read this way would show mojibake, not an error). The CSV
releases are strict UTF-8; a bad byte raises naming the line.

Ratings below ``data.min_rating`` are dropped, counted in ``skipped["ratings_below_min_rating"]``. A rating
for a movie missing from the movies file raises naming the line. Item text fields: title, genres
('Action | Comedy'), and for ml-100k release_date. Orders = the rating timestamp.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from s2gr_ray.config import DataConfig
from s2gr_ray.data.formats.tables import (GZIP_ERRORS, csv_line, gzip_error, ids_as_text, is_gzip,
                                          read_csv_table)
from s2gr_ray.data.ingest import DataError, RawDataset

LAYOUT_FILES: dict[str, tuple[str, str]] = {  # (ratings, movies)
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-latest": ("ratings.csv", "movies.csv"),
}
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")
_NO_GENRES = "(no genres listed)"


def detect_layout(root: Path, layout: str) -> tuple[str, Path]:
    """(layout, folder holding its files) for ``layout`` (or every layout when 'auto'); else a clear error."""
    wanted = list(LAYOUT_FILES) if layout == "auto" else [layout]
    if layout not in LAYOUT_FILES and layout != "auto":
        raise DataError(f"data.movielens_layout = {layout!r} is not one of auto, {', '.join(LAYOUT_FILES)}")

    def match(folder: Path) -> list[str]:
        return [lay for lay in wanted if all((folder / f).is_file() for f in LAYOUT_FILES[lay])]

    if root.is_dir():
        found = match(root)
        if found:
            return found[0], root
        subs = [(sub, lay) for sub in sorted(p for p in root.iterdir() if p.is_dir()) for lay in match(sub)[:1]]
        if len(subs) == 1:
            return subs[0][1], subs[0][0]
        if len(subs) > 1:
            raise DataError(f"{root}: several MovieLens folders inside ({', '.join(s.name for s, _ in subs)}); "
                            "point data.path at one of them")
    expected = "; ".join(f"{lay}: {' + '.join(LAYOUT_FILES[lay])}" for lay in wanted)
    present = sorted(p.name for p in root.iterdir())[:20] if root.is_dir() else []
    raise DataError(f"{root}: no MovieLens files found for data.movielens_layout = {layout!r}; expected "
                    f"{expected} (files present: {', '.join(present) or 'none'})")


def latin1_lines(path: Path):
    """Yield (line number, line) of a latin-1 file (gzipped or not); blank lines skipped."""
    gz = is_gzip(path)
    lineno = 0
    try:
        with (gzip.open(path, "rt", encoding="latin-1") if gz else open(path, encoding="latin-1")) as fh:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except GZIP_ERRORS as exc:
        raise gzip_error(path, exc, lineno) from None


def _fields(line: str, sep: str, count: int, path: Path, lineno: int, layout: str) -> list[str]:
    parts = line.split(sep)
    if len(parts) != count:
        raise DataError(f"{path}:{lineno}: expected {count} {sep!r}-separated fields, found {len(parts)}; is this "
                        f"an unmodified {layout} file?")
    return parts


def _number(text: str, kind: type, path: Path, lineno: int, what: str):
    try:
        return kind(text)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {what} {text!r} is not a number") from None


def _read_ratings_fast(path: Path, sep: str, movies: dict):
    """pyarrow fast path ('::' rewritten to a tab); None on any irregularity, so the exact line-by-line parser
    below reports it (pyarrow skips blank lines, so its row numbers are not file lines)."""
    data = path.read_bytes()
    if is_gzip(path):
        try:
            data = gzip.decompress(data)
        except GZIP_ERRORS as exc:
            raise gzip_error(path, exc) from None
    if sep != "\t":
        if b"\t" in data or b'"' in data:
            return None
        data = data.replace(sep.encode(), b"\t")
    data = data.decode("latin-1").encode("utf-8")
    names = ["user", "item", "rating", "time"]
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(column_names=names),
                               parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                               convert_options=pacsv.ConvertOptions(
                                   column_types={"user": pa.string(), "item": pa.string(),
                                                 "rating": pa.float64(), "time": pa.int64()}))
    except (pa.ArrowInvalid, OSError):
        return None
    users, items = pc.utf8_trim_whitespace(table.column("user")), pc.utf8_trim_whitespace(table.column("item"))
    if (table.column("rating").null_count or table.column("time").null_count
            or pc.any(pc.equal(users, "")).as_py()
            or not pc.all(pc.is_in(items, value_set=pa.array(list(movies), pa.string()))).as_py()):
        return None
    return (users.to_pylist(), items.to_pylist(), table.column("rating").to_numpy(),
            table.column("time").to_numpy().astype(np.int64))


def _read_ratings_dat(path: Path, sep: str, movies: dict, layout: str):
    """u.data / ratings.dat → (users, items, ratings, timestamps)."""
    fast = _read_ratings_fast(path, sep, movies)
    if fast is not None:
        return fast
    users, items, ratings, times = [], [], [], []
    for lineno, line in latin1_lines(path):
        user, item, rating, ts = (p.strip() for p in _fields(line, sep, 4, path, lineno, layout))
        if item not in movies:
            raise DataError(f"{path}:{lineno}: movie {item!r} is not in the movies file; is the folder complete?")
        users.append(user)
        items.append(item)
        ratings.append(_number(rating, float, path, lineno, "rating"))
        times.append(_number(ts, int, path, lineno, "timestamp"))
    return users, items, np.asarray(ratings, dtype=np.float64), np.asarray(times, dtype=np.int64)


def _read_100k(folder: Path):
    genre_path = folder / "u.genre"
    genres = list(ML100K_GENRES)
    if genre_path.is_file():
        named: dict[int, str] = {}
        for lineno, line in latin1_lines(genre_path):
            name, idx = _fields(line, "|", 2, genre_path, lineno, "ml-100k")
            named[_number(idx, int, genre_path, lineno, "genre index")] = name
        if sorted(named) != list(range(len(named))):
            raise DataError(f"{genre_path}: genre indices must be 0..{len(named) - 1}")
        genres = [named[i] for i in range(len(named))]
    item_path = folder / "u.item"
    movies: dict[str, dict[str, str]] = {}
    for lineno, line in latin1_lines(item_path):
        parts = _fields(line, "|", 5 + len(genres), item_path, lineno, "ml-100k")
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{item_path}:{lineno}: genre flags must be 0 or 1, found {'|'.join(flags)}")
        text = {"title": parts[1].strip(), "release_date": parts[2].strip(),
                "genres": " | ".join(g for g, f in zip(genres, flags) if f == "1")}
        _add_movie(movies, parts[0].strip(), {k: v for k, v in text.items() if v}, item_path, lineno)
    return movies, _read_ratings_dat(folder / "u.data", "\t", movies, "ml-100k")


def _read_1m(folder: Path):
    movie_path = folder / "movies.dat"
    movies: dict[str, dict[str, str]] = {}
    for lineno, line in latin1_lines(movie_path):
        movie_id, title, genres = _fields(line, "::", 3, movie_path, lineno, "ml-1m")
        text = {"title": title.strip(), "genres": " | ".join(g for g in genres.strip().split("|") if g)}
        _add_movie(movies, movie_id.strip(), {k: v for k, v in text.items() if v}, movie_path, lineno)
    return movies, _read_ratings_dat(folder / "ratings.dat", "::", movies, "ml-1m")


def _add_movie(movies: dict[str, dict[str, str]], movie_id: str, text: dict[str, str], path: Path, lineno: int):
    if movie_id in movies:  # the later line would silently give the earlier movie's ratings another title
        raise DataError(f"{path}:{lineno}: movie id {movie_id!r} appears a second time (first as "
                        f"{movies[movie_id].get('title', '')!r}); one line per movie")
    movies[movie_id] = text


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _latest_hint(path: Path, columns: list[str]) -> str:
    """What a missing column of an ml-latest CSV is told: its names are fixed (no config key renames them)."""
    return (f"an ml-latest {path.name} needs the header columns {', '.join(columns)} (as in the GroupLens "
            "download); restore the original file or its header line")


def _read_latest(folder: Path):
    movie_path, ratings_path = folder / "movies.csv", folder / "ratings.csv"
    movie_cols = ["movieId", "title", "genres"]
    table = read_csv_table(movie_path, movie_cols, movie_cols, missing_hint=_latest_hint(movie_path, movie_cols))
    movies: dict[str, dict[str, str]] = {}
    for i, (movie_id, title, genres) in enumerate(zip(*(table.column(c).to_pylist()
                                                           for c in ("movieId", "title", "genres")))):
        if movie_id in movies:
            raise DataError(f"{movie_path}:{csv_line(movie_path, i)}: duplicate movieId {movie_id!r}")
        genre_text = "" if genres == _NO_GENRES else " | ".join(g for g in genres.split("|") if g)
        movies[movie_id] = {k: v for k, v in {"title": title.strip(), "genres": genre_text}.items() if v}
    cols = ["userId", "movieId", "rating", "timestamp"]
    ratings = read_csv_table(ratings_path, cols, ["userId", "movieId"], missing_hint=_latest_hint(ratings_path, cols))
    items = ids_as_text(ratings.column("movieId"), ratings_path, "movieId")
    unknown = np.flatnonzero(~pc.is_in(items, value_set=pa.array(list(movies), pa.string())).to_numpy(
        zero_copy_only=False))
    if len(unknown):
        first = int(unknown[0])
        raise DataError(f"{ratings_path}:{csv_line(ratings_path, first)}: movie {items[first].as_py()!r} is not "
                        f"in {movie_path}; is the folder complete?")
    for name in ("rating", "timestamp"):
        col = ratings.column(name)
        if col.null_count or not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            bad = next((i for i, v in enumerate(col.to_pylist()) if not _is_number(v)), 0)
            raise DataError(f"{ratings_path}:{csv_line(ratings_path, bad)}: {name} {col[bad].as_py()!r} is not a "
                            "number")
    users = ids_as_text(ratings.column("userId"), ratings_path, "userId")
    return movies, (users.to_pylist(), items.to_pylist(),
                    ratings.column("rating").to_numpy().astype(np.float64),
                    ratings.column("timestamp").to_numpy().astype(np.int64))


def read_movielens(cfg: DataConfig) -> RawDataset:
    """MovieLens ratings (>= data.min_rating) + movie titles and genres."""
    root = Path(cfg.path)
    layout, folder = detect_layout(root if root.is_dir() else root.parent, cfg.movielens_layout)
    reader = {"ml-100k": _read_100k, "ml-1m": _read_1m, "ml-latest": _read_latest}[layout]
    movies, (users, items, ratings, times) = reader(folder)
    keep = ratings >= cfg.min_rating
    skipped = {"ratings_below_min_rating": int((~keep).sum())} if cfg.min_rating > 0 else {}
    if not keep.any():
        raise DataError(f"{folder}: no ratings >= data.min_rating = {cfg.min_rating}")
    if not keep.all():
        idx = np.flatnonzero(keep)
        users = [users[i] for i in idx]
        items = [items[i] for i in idx]
        times = times[idx]
    ratings_file, movies_file = LAYOUT_FILES[layout]
    return RawDataset(users, items, times, movies, source=f"{folder / ratings_file} + {folder / movies_file} "
                      f"({layout})", skipped=skipped, sequences_are_final=False,
                      files=[folder / ratings_file, folder / movies_file]
                      + ([folder / "u.genre"] if layout == "ml-100k" else []))  # (added later: stale too)
