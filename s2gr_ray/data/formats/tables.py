"""① ``data.format=tables``: an interactions table + an items table (parquet, CSV / TSV, or items JSONL).

Interactions: columns ``data.user_column``, ``data.item_column`` and, optionally, ``data.time_column`` (numbers,
text of numbers, ISO-8601 text (with or without a zone; none = UTC), or a parquet timestamp / date). Without a time column the file order is the order: when the file
lacks the default ``timestamp`` column (logged), or with ``data.time_column=''``; a time column set to another
name must exist (a misspelt name raises rather than silently using file order). Items: the id
column ``data.items_id_column`` (default: the name ``data.item_column``) plus any text columns; ``data.text_fields`` later picks the ones to embed.

Ids are kept as the file spells them (CSV ids are read as text, so ``007`` stays ``007``; integer parquet ids
become their decimal text). Rows are numbered 1-based after the header in error messages; for CSV the file line
is that number + 1. Also home of the CSV helpers the other readers share (`read_csv_table`, `require_file`).
"""
from __future__ import annotations

import csv
import gzip
import io
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from s2gr_ray.config import DataConfig
from s2gr_ray.data.ingest import DataError, RawDataset, category_text, read_items_jsonl, spelling_hint

_GZIP_MAGIC = b"\x1f\x8b"
# what reading a truncated or damaged .gz raises (gzip.open / gzip.decompress): shown as a DataError naming the file
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def gzip_error(path: Path, exc: BaseException, lineno: int | None = None) -> DataError:
    """The DataError for a gzip file that cannot be read to its end (``lineno``: the last line read whole)."""
    where = f" after line {lineno}" if lineno else ""
    return DataError(f"{path}: truncated or corrupt gzip{where} ({exc}); download it again")


# other compressions, by their magic bytes: no reader here opens them
_OTHER_COMPRESSIONS = {b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


def _is_bzip2(head: bytes) -> bool:
    """'BZh', a block size digit, then a block or end-of-stream magic ('BZh' alone can begin a line of text)."""
    return (head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) >= 10
            and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"))


def is_gzip(path: Path) -> bool:
    """True for a gzipped file (by content, not name); a DataError for a bzip2, xz, zstd or zip file, which would
    otherwise be read as text and fail on its first byte with advice about the encoding."""
    with open(path, "rb") as fh:
        head = fh.read(10)
    kind = "bzip2" if _is_bzip2(head) else next((k for m, k in _OTHER_COMPRESSIONS.items() if head.startswith(m)), "")
    if kind:
        raise DataError(f"{path}: a {kind}-compressed file; only uncompressed and gzip files are read: decompress "
                        "it (or recompress it with gzip)")
    return head[:2] == _GZIP_MAGIC


def check_gzip(path: Path) -> None:
    """Read a gzipped file to its end; a truncated or damaged stream raises `gzip_error` (error paths only)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except GZIP_ERRORS as exc:
        raise gzip_error(path, exc) from None


# --------------------------------------------------------------------------------------------- file helpers
def require_file(path: Path, key: str) -> Path:
    """Raise a DataError naming the config key and the files that are there when ``path`` is missing."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file (a dataset written as parts?); {key} names one file: "
                        "merge the parts into one file (e.g. pyarrow.parquet.read_table(folder) then write_table) "
                        f"and set {key}=<file name>")
    folder = path.parent
    present = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    listing = f" (files in {folder}: {', '.join(present) or 'none'})" if folder.is_dir() else ""
    raise DataError(f"{path}: file not found{listing}; set {key}=<file name> or data.path to the right folder")


def table_kind(path: Path) -> str:
    """parquet | csv | jsonl, from the file name (compression suffix ignored) or parquet's magic bytes."""
    name = path.name.lower()
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    if name.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    raise DataError(f"{path}: cannot tell the format from the file name; name it *.parquet, *.csv, *.tsv or "
                    "*.jsonl (optionally .gz)")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def utf8_lines(path: Path):
    """Yield (line number, line without newline), gzipped or not. Unlike a text-mode reader (which decodes in
    chunks, so a bad byte surfaces before the lines around it), each line is decoded on its own and a bad byte
    is reported on its own line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    lineno = 0
    try:
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a leading BOM is dropped
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason}); re-encode the file as "
                                    "UTF-8") from None
                yield lineno, line.rstrip("\n").rstrip("\r")
    except GZIP_ERRORS as exc:
        raise gzip_error(path, exc, lineno) from None


def _arrow_stream(path: Path):
    """A pyarrow input stream that un-gzips by content, not by file name."""
    raw = pa.OSFile(str(path))
    return pa.CompressedInputStream(raw, "gzip") if is_gzip(path) else raw


def _delimiter(path: Path) -> str:
    return "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","


def csv_header(path: Path, delimiter: str) -> list[str]:
    """Column names from the first line (strict UTF-8, BOM dropped)."""
    try:
        with _open_binary(path) as fh:
            first = fh.readline()
    except GZIP_ERRORS as exc:
        raise gzip_error(path, exc) from None
    try:
        text = first.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:1: header is not valid UTF-8 ({exc.reason}); re-encode the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}:1: empty file or empty header line; the first line must name the columns")
    header = next(csv.reader(io.StringIO(text), delimiter=delimiter))
    if len(header) == 1:  # one column: most likely another separator than the file name says
        other = next((name for sep, name in (("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "pipe"))
                      if sep != delimiter and sep in header[0]), None)
        if other:
            how = ("name the file *.tsv (or *.tsv.gz)" if other == "tab" else
                   "name the file *.csv (or *.csv.gz)" if other == "comma" else
                   "rewrite it with tabs (or with commas, named *.csv)" if delimiter == "\t" else
                   "rewrite it with commas (or with tabs, named *.tsv)")
            raise DataError(f"{path}:1: the header {header[0][:80]!r} reads as one column: the file looks "
                            f"{other}-separated, but {'*.tsv' if delimiter == chr(9) else 'a *.csv / *.txt'} file "
                            f"is read as {'tab' if delimiter == chr(9) else 'comma'}-separated; {how}")
    return header


def _locate_csv_problem(path: Path, delimiter: str, num_columns: int) -> str | None:
    """Error path only: rescan the file in Python to find the first non-UTF-8 line or wrong field count. A
    truncated or damaged gzip stream raises `gzip_error` first (its cut-off last line would read as a short row)."""
    if is_gzip(path):
        check_gzip(path)
    bad: list[tuple[int, str]] = []

    def lines():
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    bad.append((lineno, exc.reason))
                    return

    reader = csv.reader(lines(), delimiter=delimiter)
    for row in reader:
        if reader.line_num > 1 and row and len(row) != num_columns:
            return (f"{path}:{reader.line_num}: expected {num_columns} fields (as in the header), found "
                    f"{len(row)}; fix the line or quote fields that hold the delimiter")
    if bad:
        return f"{path}:{bad[0][0]}: not valid UTF-8 ({bad[0][1]}); re-encode the file as UTF-8"
    return None


def check_columns(path: Path, present: list[str], wanted: list[str], keys: dict[str, str],
                  hint: str | None = None) -> None:
    """Raise naming the first missing column and the columns present. ``keys``: column -> the config key that
    names it (the error then says to set it); for a column no option names (a fixed file layout) the error
    says which columns the file needs, or ``hint`` when given."""
    for col in wanted:
        if col not in present:
            if col in keys:
                fix = f"set {keys[col]}=<column name>"
            else:
                fix = hint or f"the file needs the columns {', '.join(dict.fromkeys(wanted))}"
            raise DataError(f"{path}: no column {col!r} (columns present: {', '.join(present) or 'none'}); {fix}")


def read_csv_table(path: Path, columns: list[str] | None, string_columns: list[str],
                   keys: dict[str, str] | None = None, delimiter: str | None = None,
                   missing_hint: str | None = None) -> pa.Table:
    """Read (some columns of) a CSV with pyarrow; string_columns are kept as text; errors name the line.
    ``missing_hint``: what a missing column that no config key in ``keys`` names is told (see check_columns)."""
    delimiter = delimiter or _delimiter(path)
    header = csv_header(path, delimiter)
    check_columns(path, header, list(columns or []) + list(string_columns), keys or {}, missing_hint)
    convert = pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in string_columns},
                                   strings_can_be_null=False)
    try:
        table = pacsv.read_csv(_arrow_stream(path), parse_options=pacsv.ParseOptions(delimiter=delimiter),
                               convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as exc:
        where = _locate_csv_problem(path, delimiter, len(header))
        raise DataError(where or f"{path}: cannot read as CSV ({exc})") from None
    for name in table.column_names:  # pyarrow infers binary for a text column that is not UTF-8
        if pa.types.is_binary(table.column(name).type) or pa.types.is_large_binary(table.column(name).type):
            where = _locate_csv_problem(path, delimiter, len(header))
            raise DataError(where or f"{path}: column {name!r} is not valid UTF-8; re-encode the file as UTF-8")
    return table


def parquet_columns(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as parquet ({exc})") from None


def read_parquet_table(path: Path, columns: list[str] | None, keys: dict[str, str]) -> pa.Table:
    check_columns(path, parquet_columns(path), list(columns or []), keys)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as parquet ({exc})") from None


# -------------------------------------------------------------------------------------------- column helpers
def _first(mask: pa.ChunkedArray | pa.Array) -> int | None:
    hits = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    return int(hits[0]) if len(hits) else None


def _row(path: Path, index: int) -> str:
    """'row 5 (line 7)' for CSV (the file's line, past the header and any blank lines), 'row 5' for other tables;
    index is 0-based. Error path only: a CSV is rescanned to find the line."""
    return f"row {index + 1} (line {csv_line(path, index)})" if table_kind(path) == "csv" else f"row {index + 1}"


def csv_line(path: Path, index: int) -> int:
    """The line of data row ``index`` (0-based) of a CSV file: pyarrow skips blank lines, so row + 2 can be
    wrong; quoted fields may span lines. Falls back to index + 2 when the file ends first."""
    with _open_binary(path) as fh:
        reader = csv.reader((raw.decode("utf-8", "replace") for raw in fh))
        rows = -1  # the header is row -1
        for row in reader:
            if not row:
                continue
            if rows == index:
                return reader.line_num
            rows += 1
    return index + 2


def ids_as_text(col: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    """An id column as non-empty text; a null / empty id raises naming the row."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_floating(t):  # integer ids that went through a float column (pandas with NaN)
        nan = _first(pc.fill_null(pc.is_nan(col), False))
        if nan is not None:  # (a NaN would cast to one made-up integer id shared by every such row)
            raise DataError(f"{path}: {_row(path, nan)}: empty {name!r} (NaN); every row needs an id")
        values = col.to_numpy(zero_copy_only=False)
        finite = values[np.isfinite(values)]
        if len(finite) and np.all(finite == np.round(finite)):
            col, t = col.cast(pa.int64(), safe=False), pa.int64()
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            col = col.cast(pa.string())
        except pa.ArrowInvalid:
            raise DataError(f"{path}: column {name!r} holds bytes that are not valid UTF-8") from None
    elif not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise DataError(f"{path}: column {name!r} has type {t}; ids must be text or integers")
    bad = _first(pc.or_kleene(pc.is_null(col), pc.equal(col, "")))
    if bad is not None:
        raise DataError(f"{path}: {_row(path, bad)}: empty {name!r}; every row needs an id")
    return col


def orders_from_time(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """A time column → int64 ordering key. Integers as is; parquet timestamps / dates in their own unit;
    fractional floats ×1e6 (only the order matters); text columns of numbers like numbers, of ISO-8601 times as
    UTC Unix seconds (see `_orders_from_text`). Nulls raise naming the row."""
    bad = _first(pc.is_null(col))
    if bad is not None:
        raise DataError(f"{path}: {_row(path, bad)}: empty {name!r}; fill it or drop the time column "
                        "(file order is used without one)")
    t = col.type
    if pa.types.is_integer(t):
        return col.to_numpy().astype(np.int64)
    if pa.types.is_floating(t):
        values = col.to_numpy()
        if not np.all(np.isfinite(values)):
            raise DataError(f"{path}: {_row(path, int(np.flatnonzero(~np.isfinite(values))[0]))}: {name!r} is "
                            "not a finite number")
        if np.all(values == np.round(values)):
            return values.astype(np.int64)
        return np.round(values * 1e6).astype(np.int64)
    if pa.types.is_date(t):
        col, t = col.cast(pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(t):
        return col.cast(pa.int64()).to_numpy().astype(np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _orders_from_text(col, path, name)
    raise DataError(f"{path}: column {name!r} has type {t}; a time column must hold numbers or times")


_INT_TEXT = r"^[+-]?\d+$"
_NUMBER_TEXT = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
# YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH[[:]MM]]; the date/time and the zone are matched apart
_ISO_TEXT = (r"^(?P<base>\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)"
             r"(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?$")


def _orders_from_text(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """A text time column (vectorized; millions of rows): all numbers ("1577836800", "1.5e9") → read as numbers;
    all ISO-8601 ("2020-01-01", "2020-01-01 10:00:00", "2020-01-01T10:00:00.25Z", "...+02:00"; a time without
    zone is UTC) → UTC Unix seconds (microseconds when some time has a fraction of a second: only the order
    matters). Numbers mixed with times, or a value that is neither, raise naming the row(s)."""
    text = pc.utf8_trim_whitespace(col)
    is_number = pc.match_substring_regex(text, _NUMBER_TEXT)
    is_iso = pc.match_substring_regex(text, _ISO_TEXT)
    if pc.all(is_number).as_py():
        if pc.all(pc.match_substring_regex(text, _INT_TEXT)).as_py():
            try:
                return pc.replace_substring_regex(text, r"^\+", "").cast(pa.int64()).to_numpy().astype(np.int64)
            except pa.ArrowInvalid:  # beyond int64: take it as a float, as the number column would be
                pass
        return orders_from_time(text.cast(pa.float64()), path, name)
    if pc.all(is_iso).as_py():
        return _iso_orders(text, path, name)
    number_row, iso_row = _first(is_number), _first(is_iso)
    if number_row is not None and iso_row is not None:
        raise DataError(f"{path}: column {name!r}: mixed time formats: {_row(path, number_row)} holds the number "
                        f"{text[number_row].as_py()!r} but {_row(path, iso_row)} the ISO-8601 time "
                        f"{text[iso_row].as_py()!r}; write one format in the whole column (Unix seconds or "
                        "ISO-8601)")
    bad = _first(pc.invert(pc.or_(is_number, is_iso)))
    raise DataError(f"{path}: {_row(path, bad)}: {name!r} = {col[bad].as_py()!r} is neither a number nor an "
                    "ISO-8601 time; write Unix seconds or YYYY-MM-DD[ HH:MM:SS][Z|+HH:MM]")


def _iso_orders(text: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """ISO-8601 text (every value matches `_ISO_TEXT`) → UTC Unix seconds, or microseconds when a value has a
    fraction of a second."""
    parts = pc.extract_regex(text, _ISO_TEXT)
    base = pc.struct_field(parts, "base")
    zone = pc.replace_substring(pc.fill_null(pc.struct_field(parts, "zone"), ""), ":", "")
    base = pc.replace_substring_regex(base, r"(\.\d{6})\d+$", r"\1")  # past microseconds: cut (order only)
    try:
        micros = base.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy().astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. month 13: find the row (error path only)
        for i, value in enumerate(base.to_pylist()):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise DataError(f"{path}: {_row(path, i)}: {name!r} = {text[i].as_py()!r} is not a valid "
                                "date / time") from None
        raise DataError(f"{path}: column {name!r}: cannot read the ISO-8601 times; write Unix seconds") from None

    def digits(start: int) -> np.ndarray:
        part = pc.utf8_slice_codeunits(zone, start, start + 2)
        return pc.if_else(pc.equal(part, ""), "0", part).cast(pa.int64()).to_numpy().astype(np.int64)

    sign = np.where(pc.equal(pc.utf8_slice_codeunits(zone, 0, 1), "-").to_numpy(zero_copy_only=False), -1, 1)
    offset_s = np.where(pc.is_in(zone, value_set=pa.array(["", "Z", "z"])).to_numpy(zero_copy_only=False),
                        0, sign * (digits(1) * 3600 + digits(3) * 60))
    micros = micros - offset_s * 1_000_000
    if np.all(micros % 1_000_000 == 0):
        return micros // 1_000_000
    return micros


def _text(field: str, value) -> str:
    if value is None:
        return ""
    if field == "categories":
        return category_text(value)
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value if v is not None)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# ----------------------------------------------------------------------------------------------- items
def read_items_table(path: Path, id_column: str, key: str = "data.item_column") -> dict[str, dict[str, str]]:
    """Items parquet / CSV / JSONL → raw item id → {field: text} in file order; duplicate ids raise. ``key``: the
    config key that named ``id_column`` (for the message when the file lacks it)."""
    kind = table_kind(path)
    if key == "data.item_column":  # the interactions' name, by default also the items'
        same = (f"the items file's id column has the name of the interactions' item column by default (data."
                f"item_column = {id_column!r}); where it is named otherwise, set data.items_id_column=<its name>")
    else:
        same = f"{key} = {id_column!r} names the items file's id column; set it to the name the file uses"
    if kind == "jsonl":
        return read_items_jsonl(path, id_field=id_column, missing_hint=same)
    if kind == "csv":
        header = csv_header(path, _delimiter(path))
        check_columns(path, header, [id_column], {}, same)
        table = read_csv_table(path, None, header, {}, missing_hint=same)
    else:
        check_columns(path, parquet_columns(path), [id_column], {}, same)
        table = read_parquet_table(path, None, {})
    ids = ids_as_text(table.column(id_column), path, id_column).to_pylist()
    fields = [c for c in table.column_names if c != id_column]
    columns = {f: table.column(f).to_pylist() for f in fields}
    out: dict[str, dict[str, str]] = {}
    first_row: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in first_row:
            raise DataError(f"{path}: duplicate item id {key!r} at {_row(path, first_row[key])} and "
                            f"{_row(path, i)}; item ids must be unique")
        first_row[key] = i
        out[key] = {f: _text(f, columns[f][i]) for f in fields}
    if not out:
        raise DataError(f"{path}: no items found")
    return out


# -------------------------------------------------------------------------------------------- the reader
def read_tables(cfg: DataConfig) -> RawDataset:
    """Interactions at data.path/data.interactions_file (or data.path itself) + items at data.items_file."""
    root = Path(cfg.path)
    folder = root.parent if root.is_file() else root
    inter_path = require_file(root if root.is_file() else root / cfg.interactions_file, "data.interactions_file")
    items_path = require_file(folder / cfg.items_file, "data.items_file")
    item_text = read_items_table(items_path, cfg.items_id_column or cfg.item_column,
                                 "data.items_id_column" if cfg.items_id_column else "data.item_column")

    kind = table_kind(inter_path)
    keys = {cfg.user_column: "data.user_column", cfg.item_column: "data.item_column",
            cfg.time_column: "data.time_column"}
    if kind == "csv":
        present = csv_header(inter_path, _delimiter(inter_path))
    elif kind == "parquet":
        present = parquet_columns(inter_path)
    else:
        raise DataError(f"{inter_path}: interactions must be parquet or CSV / TSV (got a JSON file name)")
    has_time = bool(cfg.time_column) and cfg.time_column in present
    notes = []
    if cfg.time_column and not has_time:
        if cfg.time_column != DataConfig().time_column:  # set on purpose: a misspelling must not mean file order
            raise DataError(f"{inter_path}: no time column {cfg.time_column!r} (data.time_column = "
                            f"{cfg.time_column!r}; columns present: {', '.join(present)}); set "
                            "data.time_column=<column name>, or data.time_column='' to order by file position")
        notes.append(f"{inter_path} has no {cfg.time_column!r} column (data.time_column): interactions are "
                     "ordered by file position")
    columns = [cfg.user_column, cfg.item_column] + ([cfg.time_column] if has_time else [])
    if kind == "csv":
        table = read_csv_table(inter_path, columns, [cfg.user_column, cfg.item_column], keys)
    else:
        table = read_parquet_table(inter_path, columns, keys)
    if table.num_rows == 0:
        raise DataError(f"{inter_path}: no interactions found")
    users = ids_as_text(table.column(cfg.user_column), inter_path, cfg.user_column)
    items = ids_as_text(table.column(cfg.item_column), inter_path, cfg.item_column)
    unknown = _first(pc.invert(pc.is_in(items, value_set=pa.array(list(item_text), pa.string()))))
    if unknown is not None:
        item = items[unknown].as_py()
        raise DataError(f"{inter_path}: {_row(inter_path, unknown)}: item {item!r} is not in {items_path}"
                        f"{spelling_hint(item, item_text)}; add it to the items file or remove the interaction")
    if has_time:
        orders = orders_from_time(table.column(cfg.time_column), inter_path, cfg.time_column)
    else:
        orders = np.arange(table.num_rows, dtype=np.int64)
    source = f"{inter_path} + {items_path}" + ("" if has_time else " (no time column: file order)")
    return RawDataset(users.to_pylist(), items.to_pylist(), orders, item_text, source=source,
                      sequences_are_final=False, notes=notes, files=[inter_path, items_path])
