"""Loaders: LAReQA format (hand-built files, the bundled copy, the real files), download checks, BEIR, XTD."""
import json

import pytest

import hbfast
from hbfast.data import lareqa as lareqa_module
from lareqa_fixtures import SHARED_DATA, require_shared_data, tiny_lareqa_dir, write_beir, write_lareqa, write_xtd


@pytest.fixture
def shared_data():
    return require_shared_data()


needs_shared = pytest.mark.usefixtures("shared_data")  # skips without the data; fails under CI=true


def test_tiny_lareqa_tables(tmp_path):
    ds = hbfast.data.load_lareqa(str(tiny_lareqa_dir(tmp_path)))
    assert ds.languages == ("de", "en")
    assert ds.questions["en"]["id"] == ["q1", "q2", "q3"]
    # candidates are every paragraph's sentences in order; relevant is the answer sentence's row
    assert ds.candidates["en"]["text"] == ["the cat sleeps", "dogs bark loudly", "rain falls down", "the sun shines", "snow is cold"]
    assert ds.candidates["en"]["paragraph"] == [0, 0, 1, 1, 1]
    assert ds.questions["en"]["relevant"] == [0, 1, 4]
    assert ds.questions["de"]["relevant"] == [0, 1]
    assert ds.subset(["en"]).languages == ("en",)


def test_sentence_boundaries(tmp_path):
    path = write_lareqa(tmp_path / "xx.json", [(["ab", "cd"], [("q", "?", 1)])])
    doc = json.loads(path.read_text())
    qa = doc["data"][0]["paragraphs"][0]["qas"][0]
    for start, sentence in [(0, 0), (1, 0), (3, 1), (4, 1)]:  # breaks [0, 2) and [3, 5)
        qa["answers"][0]["answer_start"] = start
        path.write_text(json.dumps(doc))
        assert hbfast.data.load_lareqa(str(tmp_path)).questions["xx"]["relevant"] == [sentence]
    qa["answers"][0]["answer_start"] = 2  # the space between the sentences
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"xx\.json.*'q'.*answer start 2 lies in no sentence"):
        hbfast.data.load_lareqa(str(tmp_path))


def test_bad_files_name_the_problem(tmp_path):
    path = tmp_path / "en.json"
    path.write_text('{"data": [')
    with pytest.raises(ValueError, match=r"en\.json: malformed JSON"):
        hbfast.data.load_lareqa(str(tmp_path))
    write_lareqa(path, [(["a b", "c d"], [("dup", "?", 0)]), (["e f"], [("dup", "?", 0)])])
    with pytest.raises(ValueError, match=r"en\.json: duplicate question id 'dup'"):
        hbfast.data.load_lareqa(str(tmp_path))
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": []}]}]}))
    with pytest.raises(ValueError, match=r"en\.json.*no 'sentences' list"):
        hbfast.data.load_lareqa(str(tmp_path))
    path.write_text(json.dumps({"data": [{"paragraphs": [{"sentences": ["a"], "sentence_breaks": [], "qas": []}]}]}))
    with pytest.raises(ValueError, match=r"1 sentences but 0 sentence_breaks"):
        hbfast.data.load_lareqa(str(tmp_path))


def test_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'xquad'.*mlqa-r.*xquad-r"):
        hbfast.data.load_lareqa("xquad")
    with pytest.raises(ValueError, match=r"unknown language\(s\) \['xx'\]"):
        hbfast.data.load_lareqa("xquad-r", languages=["en", "xx"])
    # an explicit data_dir never falls back to the bundled copy
    tiny_lareqa_dir(tmp_path)
    with pytest.raises(ValueError, match=r"lacks ar\.json, el\.json"):
        hbfast.data.load_lareqa("xquad-r", data_dir=tmp_path)
    ds = hbfast.data.load_lareqa("xquad-r", data_dir=tmp_path, languages="en,de")
    assert ds.name == "xquad-r" and ds.languages == ("en", "de") and ds.source == str(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        hbfast.data.load_lareqa("mlqa-r", data_dir=tmp_path / "nowhere")


def test_bundled_sizes():
    xquad = hbfast.data.load_lareqa("xquad-r")
    assert xquad.source.startswith("bundled")
    assert len(xquad.languages) == 11
    assert all(len(xquad.questions[lang]) == 1190 for lang in xquad.languages)
    assert sum(len(xquad.candidates[lang]) for lang in xquad.languages) == 13014  # LAReQA's union pool
    mlqa = hbfast.data.load_lareqa("mlqa-r", languages=["en", "de"])
    assert len(mlqa.questions["en"]) == 1148 and len(mlqa.questions["de"]) == 512


@needs_shared
@pytest.mark.parametrize("name", ["xquad-r", "mlqa-r"])
def test_bundle_equals_the_original_files(name):
    languages = lareqa_module.LANGUAGES[name]
    bundled = hbfast.data.load_lareqa(name)
    original = hbfast.data.load_lareqa(name, data_dir=SHARED_DATA)
    assert bundled.languages == original.languages == languages
    for lang in languages:
        assert bundled.questions[lang].to_dict() == original.questions[lang].to_dict()
        assert bundled.candidates[lang].to_dict() == original.candidates[lang].to_dict()


@needs_shared
def test_download_with_file_url_and_cache(tmp_path):
    fetched = []

    def counting_fetch(url, destination):
        fetched.append(url)
        lareqa_module._fetch(url, destination)

    base = (SHARED_DATA / "xquad-r").as_uri()
    d = hbfast.data.download_lareqa("xquad-r", tmp_path, ["en"], base_url=base, fetch=counting_fetch)
    assert fetched == [f"{base}/en.json"] and (d / "en.json").is_file()
    hbfast.data.download_lareqa("xquad-r", tmp_path, ["en"], base_url=base, fetch=counting_fetch)
    assert len(fetched) == 1  # cached and checksum-verified, not fetched again
    ds = hbfast.data.load_lareqa("xquad-r", data_dir=d, languages=["en"])
    assert len(ds.questions["en"]) == 1190


def test_download_checksum_mismatch_and_offline(tmp_path):
    def wrong_bytes(url, destination):
        destination.write_bytes(b'{"data": []}')

    with pytest.raises(ValueError, match=r"checksum mismatch for .*/de\.json"):
        hbfast.data.download_lareqa("mlqa-r", tmp_path, ["de"], fetch=wrong_bytes)
    assert not (tmp_path / "mlqa-r" / "de.json").exists()

    def offline(url, destination):
        raise OSError("network is unreachable")

    with pytest.raises(OSError, match=r"could not download https://raw\.githubusercontent\.com/.*/de\.json"):
        hbfast.data.download_lareqa("mlqa-r", tmp_path, ["de"], fetch=offline)


def test_missing_bundle_downloads_the_same_dataset(tmp_path, monkeypatch):
    urls = []

    def offline(url, destination):
        urls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(lareqa_module, "BUNDLED_DIR", tmp_path / "no-bundle")
    monkeypatch.setattr(lareqa_module, "_fetch", offline)
    with pytest.raises(OSError, match="could not download"):
        hbfast.data.load_lareqa("mlqa-r", languages=["zh"], cache_dir=tmp_path)
    assert urls == [f"{lareqa_module.URLS['mlqa-r']}/zh.json"]


def test_beir_loader_and_errors(tmp_path):
    root = write_beir(tmp_path / "set", [("d1", "T", "cats"), ("d2", "", "dogs")], [("q1", "cat?"), ("q2", "dog?")],
                      [("q1", "d1", 1), ("q2", "d2", 2)])
    ds = hbfast.data.load_beir(root)
    assert ds.corpus["id"] == ["d1", "d2"] and ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    with open(root / "qrels" / "test.tsv", "a") as f:
        f.write("q1\td9\t1\n")
    with pytest.raises(ValueError, match=r"test\.tsv:4: corpus id 'd9' is not in corpus\.jsonl"):
        hbfast.data.load_beir(root)
    with open(root / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d1", "text": "again"}\n')
    with pytest.raises(ValueError, match=r"corpus\.jsonl:3: duplicate id 'd1'"):
        hbfast.data.load_beir(root)
    root = write_beir(tmp_path / "bad", [("d1", "", "x")], [("q1", "y")], [("q1", "d1", 1)])
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: malformed JSON"):
        hbfast.data.load_beir(root)
    with pytest.raises(ValueError, match=r"dev\.tsv: file not found \(qrels present: \['test\.tsv'\]\)"):
        hbfast.data.load_beir(write_beir(tmp_path / "ok", [("d", "", "x")], [("q", "y")], [("q", "d", 1)]), "dev")


def test_xtd_loader(tmp_path):
    names = ["COCO_1.jpg", "COCO_2.jpg", "COCO_3.jpg"]
    root = write_xtd(tmp_path, names, {"en": ["red car", "blue sky", "green tree"],
                                       "de": ["red auto", "blue himmel", "green baum"]}, ["red", "blue", "green"])
    ds = hbfast.data.load_xtd(root, images=root / "images")
    assert ds.languages == ("en", "de") and ds.image_names == names
    assert [p.name for p in ds.image_paths()] == names
    with pytest.raises(ValueError, match=r"lacks captions for \['fr'\]"):
        hbfast.data.load_xtd(root, languages=["en", "fr"])
    (root / "images" / "COCO_2.jpg").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 images missing in .*images: COCO_2\.jpg"):
        hbfast.data.load_xtd(root, images=root / "images")
    (root / "XTD10" / "test_1kcaptions_en.txt").write_text("only one")
    with pytest.raises(ValueError, match=r"test_1kcaptions_en\.txt: 1 captions for 3 images"):
        hbfast.data.load_xtd(root)
    (root / "XTD10" / "test_1kcaptions_en.txt").write_text("a\nb\nc")
    with pytest.raises(ValueError, match="no image directory"):
        hbfast.data.load_xtd(root, languages=["en"]).image_paths()


@needs_shared
def test_xtd_download_from_file_url(tmp_path):
    base = (SHARED_DATA / "xtd10").as_uri()
    d = hbfast.data.download_xtd(tmp_path, ["en", "jp"], base_url=base)
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*.txt")) == [
        "STAIR/test_1kcaptions_jp.txt", "XTD10/test_1kcaptions_en.txt", "XTD10/test_image_names.txt"]
    ds = hbfast.data.load_xtd(d)
    assert ds.languages == ("en", "jp") and len(ds.captions) == 1000 and ds.image_names[0].startswith("COCO_")
    everything = hbfast.data.load_xtd(hbfast.data.download_xtd(tmp_path, base_url=base))  # all 11 languages
    assert everything.languages == ("en", "es", "it", "ko", "pl", "ru", "tr", "zh", "de", "fr", "jp")
    assert everything.captions.to_dict() == hbfast.data.load_xtd(SHARED_DATA / "xtd10").captions.to_dict()


def test_xtd_download_checks_and_names_the_url(tmp_path):
    def wrong_bytes(url, destination):
        destination.write_text("COCO_x.jpg\n")

    with pytest.raises(ValueError, match=r"XTD: checksum mismatch for .*/XTD10/test_image_names\.txt"):
        hbfast.data.download_xtd(tmp_path, ["en"], fetch=wrong_bytes)
    with pytest.raises(ValueError, match=r"XTD: unknown language\(s\) \['xx'\]"):
        hbfast.data.download_xtd(tmp_path, ["xx"])


def test_bundled_license_files_are_present():
    bundled = lareqa_module.BUNDLED_DIR
    for name in ("LICENSE-xquad-r", "LICENSE-mlqa-r", "ATTRIBUTION.md"):
        assert (bundled / name).is_file(), name
    if SHARED_DATA.is_dir():
        assert (bundled / "LICENSE-xquad-r").read_bytes() == (SHARED_DATA / "xquad-r" / "LICENSE").read_bytes()
    assert sum(p.stat().st_size for p in bundled.glob("*.parquet")) < 4_000_000  # compact
