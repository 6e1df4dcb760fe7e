"""data.format=movielens: ml-100k, ml-1m (latin-1) and ml-latest (UTF-8 CSV), layout detection and errors."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from s2gr_ray.config import DataConfig
from s2gr_ray.data.formats.movielens import read_movielens
from s2gr_ray.data.ingest import DataError, read_dataset

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]


def _flags(*names):
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


def write_100k(folder, genre_file=True, extra_data=""):
    folder.mkdir(parents=True, exist_ok=True)
    if genre_file:
        (folder / "u.genre").write_bytes(("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n").encode())
    items = (f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Animation', 'Comedy')}\n"
             f"2|Les Misérables (1995)|01-Jan-1995||http://y|{_flags('Drama')}\n"
             f"3|unknown||||{_flags('unknown')}\n")
    (folder / "u.item").write_bytes(items.encode("latin-1"))  # as published: ISO-8859-1
    (folder / "u.data").write_text("196\t2\t3\t881250949\n196\t1\t5\t881250000\n22\t3\t1\t881251000\n"
                                   "22\t1\t4\t881250001\n" + extra_data)


def write_1m(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                        "2::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1"))
    (folder / "ratings.dat").write_text("1::2::5::978300760\n1::1::3::978300700\n2::1::4::978300800\n")


def write_latest(folder, movies=None, ratings=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_bytes(movies if movies is not None else (
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        '3,"Amélie (2001)",(no genres listed)\n').encode("utf-8"))
    (folder / "ratings.csv").write_bytes(ratings if ratings is not None else (
        b"userId,movieId,rating,timestamp\n1,3,4.0,964982703\n1,1,2.5,964981247\n2,2,0.5,964982224\n"))


def test_ml100k_latin1_genres_and_min_rating(tmp_path):
    write_100k(tmp_path)
    raw = read_dataset(DataConfig(format="movielens", path=str(tmp_path), min_rating=2.0))
    assert raw.users == ["196", "196", "22"] and raw.items == ["2", "1", "1"]
    assert raw.orders.tolist() == [881250949, 881250000, 881250001]
    assert raw.skipped == {"ratings_below_min_rating": 1}
    assert raw.item_text["2"] == {"title": "Les Misérables (1995)", "release_date": "01-Jan-1995", "genres": "Drama"}
    assert raw.item_text["1"]["genres"] == "Animation | Comedy"
    assert raw.item_text["3"] == {"title": "unknown", "genres": "unknown"}
    assert "ml-100k" in raw.source and raw.sequences_are_final is False


def test_ml100k_without_genre_file_uses_standard_names(tmp_path):
    write_100k(tmp_path, genre_file=False)
    raw = read_movielens(DataConfig(format="movielens", path=str(tmp_path), movielens_layout="ml-100k"))
    assert len(raw.users) == 4 and raw.skipped == {}
    assert raw.item_text["1"]["genres"] == "Animation | Comedy"


def test_ml1m_in_the_extracted_subfolder(tmp_path):
    write_1m(tmp_path / "ml-1m")
    raw = read_dataset(DataConfig(format="movielens", path=str(tmp_path)))
    assert raw.users == ["1", "1", "2"] and raw.items == ["2", "1", "1"]
    assert raw.orders.tolist() == [978300760, 978300700, 978300800]
    assert raw.item_text["2"] == {"title": "Misérables, Les (1995)", "genres": "Drama | Musical"}


def test_ml_latest_csv(tmp_path):
    write_latest(tmp_path)
    raw = read_dataset(DataConfig(format="movielens", path=str(tmp_path), min_rating=1.0))
    assert raw.users == ["1", "1"] and raw.items == ["3", "1"] and raw.orders.tolist() == [964982703, 964981247]
    assert raw.item_text["2"] == {"title": "American President, The (1995)", "genres": "Comedy | Drama | Romance"}
    assert raw.item_text["3"] == {"title": "Amélie (2001)"}  # '(no genres listed)' dropped
    assert raw.skipped == {"ratings_below_min_rating": 1}


@pytest.mark.parametrize("case, match", [
    ("nothing", r"no MovieLens files found .*ml-100k: u\.data \+ u\.item; ml-1m: ratings\.dat \+ movies\.dat; "
                r"ml-latest: ratings\.csv \+ movies\.csv \(files present: notes\.txt\)"),
    ("wrong_layout", r"data\.movielens_layout = 'ml-1m'; expected ml-1m: ratings\.dat \+ movies\.dat"),
    ("short_line", r"u\.data:5: expected 4 '\\t'-separated fields, found 2"),
    ("bad_rating", r"u\.data:5: rating 'five' is not a number"),
    ("unknown_movie_dat", r"u\.data:5: movie '99' is not in the movies file"),
    ("bad_item_line", r"u\.item:2: expected 24 '\|'-separated fields"),
    ("latest_bad_utf8", r"movies\.csv:3: not valid UTF-8"),
    ("latest_missing_column", r"ratings\.csv: no column 'timestamp' \(columns present: userId, movieId, rating\)"),
    ("latest_unknown_movie", r"ratings\.csv:3: movie '9' is not in .*movies\.csv"),
    ("latest_bad_rating", r"ratings\.csv:4: rating 'x' is not a number"),
])
def test_errors(tmp_path, case, match):
    layout = "auto"
    if case == "nothing":
        (tmp_path / "notes.txt").write_text("hi")
    elif case == "wrong_layout":
        write_100k(tmp_path)
        layout = "ml-1m"
    elif case == "short_line":
        write_100k(tmp_path, extra_data="1\t2\n")
    elif case == "bad_rating":
        write_100k(tmp_path, extra_data="1\t2\tfive\t881250949\n")
    elif case == "unknown_movie_dat":
        write_100k(tmp_path, extra_data="1\t99\t3\t881250949\n")
    elif case == "bad_item_line":
        write_100k(tmp_path)
        lines = (tmp_path / "u.item").read_bytes().split(b"\n")
        lines[1] = b"2|Broken"
        (tmp_path / "u.item").write_bytes(b"\n".join(lines))
    elif case == "latest_bad_utf8":
        write_latest(tmp_path, movies="movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Am\xe9lie,Drama\n"
                                      .encode("latin-1"))
    elif case == "latest_missing_column":
        write_latest(tmp_path, ratings=b"userId,movieId,rating\n1,1,4.0\n")
    elif case == "latest_unknown_movie":
        write_latest(tmp_path, ratings=b"userId,movieId,rating,timestamp\n1,1,4,1\n1,9,4,2\n")
    elif case == "latest_bad_rating":
        write_latest(tmp_path, ratings=b"userId,movieId,rating,timestamp\n1,1,4,1\n1,2,4,2\n1,3,x,3\n")
    with pytest.raises(DataError, match=match):
        read_dataset(DataConfig(format="movielens", path=str(tmp_path), movielens_layout=layout))


def test_a_repeated_movie_id_is_refused_naming_the_line(tmp_path):
    """A second line for movie 1 would silently give Toy Story's ratings another title."""
    folder = tmp_path / "ml-1m"
    write_1m(folder)
    with open(folder / "movies.dat", "ab") as fh:
        fh.write("1::Heat (1995)::Action\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"movies\.dat:3: movie id '1' appears a second time \(first as 'Toy Story"):
        read_movielens(DataConfig(format="movielens", path=str(folder)))


def test_the_movielens_preset_embeds_titles_and_genres(tmp_path):
    """configs/movielens.yaml on an ml-1m layout: texts from title and genres, categories from the first genre."""
    from s2gr_ray.config import load_config
    from s2gr_ray.data.prepare import prepare_stage

    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                        "2::Misérables, Les (1995)::Drama|Musical\n"
                                        "3::Heat (1995)::Action|Crime|Thriller\n"
                                        "4::Casino (1995)::Drama|Thriller\n".encode("latin-1"))
    (folder / "ratings.dat").write_text("".join(f"{u}::{m}::4::{978300000 + 10 * u + m}\n"
                                                for u in range(1, 5) for m in (1, 2, 3, 4)))
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "movielens.yaml", [f"data.path={folder}"])
    logs: list[str] = []
    prepare_stage(cfg, tmp_path / "run", logs.append)
    items = pq.read_table(tmp_path / "run" / "items.parquet").to_pylist()
    by_title = {i["title"]: i for i in items}
    assert by_title["Heat (1995)"]["text"] == "Heat (1995). Action | Crime | Thriller"
    assert [by_title[t]["category"] for t in sorted(by_title)] == ["Drama", "Action", "Drama", "Animation"]
    assert not [m for m in logs if "no item has" in m]  # every configured field is found
