"""V-IRL-VL without a model: drawn street views, image chats, the visual split, street-view photos, safe pickles."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import random

import pytest
import yaml
from PIL import Image, ImageStat

from conftest import CONFIG_FILE
from sftvsrl.config import ConfigError, section_with_defaults
from sftvsrl.names import EVAL_OOD_VISUAL, TEXT_SPLITS
from sftvsrl.study import validate_config
from sftvsrl.tasks import get_task, task_section
from sftvsrl.tasks.safe_pickle import load_plain
from sftvsrl.tasks.views_image import (
    DIRECTIONS,
    RENDERER_VERSION,
    SEPARATOR,
    STYLE,
    Scene,
    compose_views,
    grid_size,
    make_scene,
    parse_landmarks,
    point_scene,
    render_observation,
    render_view,
    sign_boxes,
    view_boxes,
)
from sftvsrl.tasks.virl import expert_answer
from sftvsrl.tasks.virl_city import build_route, generate_city, sample_route_info
from sftvsrl.tasks.virl_vl import (
    INTERSECTION_TEXT,
    PHOTO_DIR,
    VIEWS_TEXT,
    count_image_parts,
    point_image,
    row_images,
)

SIZES = {"sft": 24, "rl": 4, "eval_id": 4, "eval_ood_rule": 4, "eval_ood_visual": 4}
CFG = {"min_intersections": 2, "max_intersections": 3, "view_size": [64, 56], "sizes": SIZES}
WRONG = json.dumps({"current observation": "a wall", "current instruction": "none", "action": "turn_direction(up)"})


@pytest.fixture(scope="module")
def splits():
    return get_task("virl_vl").generate_splits(CFG, 3)


def _scene(left=(), right=(), front=(), back=(), intersection=False) -> Scene:
    pairs = [
        (n, d) for d, names in (("left", left), ("right", right), ("front", front), ("back", back)) for n in names
    ]
    return make_scene(pairs, intersection)


def _pixels(image: Image.Image, box) -> bytes:
    return image.crop(box).tobytes()


def _image_turn_texts(messages) -> list[str]:
    """The text after each image part of the chat, in order."""
    out = []
    for m in messages:
        if isinstance(m["content"], list):
            parts = m["content"]
            out += [parts[i + 1]["text"] for i, p in enumerate(parts) if p["type"] == "image"]
    return out


# ---------------------------------------------------------------- drawing


def test_grid_geometry_has_10_pixel_black_separators_only():
    w, h = 72, 60
    scene = _scene(left=["Wood Tavern"], right=["The Dutch"], intersection=True)
    image = render_observation(scene, "id", seed=1, view_size=(w, h))
    assert image.mode == "RGB" and image.size == grid_size((w, h)) == (2 * w + 10, 2 * h + 10)
    black = (0, 0, 0)
    for y in range(image.height):
        assert all(image.getpixel((x, y)) == black for x in range(w, w + SEPARATOR))
    for x in range(image.width):
        assert all(image.getpixel((x, y)) == black for y in range(h, h + SEPARATOR))
    # the lines are exactly 10 px: the columns and rows beside them hold no black pixel
    for x in (w - 1, w + SEPARATOR):
        assert all(image.getpixel((x, y)) != black for y in (*range(h), *range(h + SEPARATOR, image.height)))
    for y in (h - 1, h + SEPARATOR):
        assert all(image.getpixel((x, y)) != black for x in (*range(w), *range(w + SEPARATOR, image.width)))
    # front top left, right top right, back bottom left, left bottom right
    boxes = view_boxes((w, h))
    assert boxes == {
        "front": (0, 0, w, h),
        "right": (w + 10, 0, 2 * w + 10, h),
        "back": (0, h + 10, w, 2 * h + 10),
        "left": (w + 10, h + 10, 2 * w + 10, 2 * h + 10),
    }
    for direction in DIRECTIONS:
        view = render_view(scene, direction, "id", 1, (w, h))
        assert _pixels(image, boxes[direction]) == view.tobytes()


def test_styles_differ_in_palette():
    scene = _scene(left=["Harbor Bank"], front=["Blue Door Cafe"])
    ident = render_observation(scene, "id", seed=4)
    ood = render_observation(scene, "ood", seed=4)
    assert ident.size == ood.size
    id_mean, ood_mean = ImageStat.Stat(ident).mean, ImageStat.Stat(ood).mean
    assert sum(id_mean) / 3 - sum(ood_mean) / 3 > 30  # night is darker
    assert sum(abs(a - b) for a, b in zip(id_mean, ood_mean)) > 90
    # the sky at the top of the front view: blue day against dark night
    r, _, b = ident.getpixel((32, 0))
    assert b > 200 and r < 150
    assert max(ood.getpixel((32, 0))) < 80
    # the commonest colours of the two looks never coincide (but for the black separators)
    common = {
        style: {c for _, c in sorted(image.getcolors(1 << 16), reverse=True)[:12]}
        for style, image in (("id", ident), ("ood", ood))
    }
    assert common["id"] & common["ood"] == {(0, 0, 0)}
    assert STYLE["id"].gabled != STYLE["ood"].gabled and STYLE["id"].sign != STYLE["ood"].sign


@pytest.mark.parametrize("style", ["id", "ood"])
@pytest.mark.parametrize("intersection", [False, True])
def test_a_landmark_is_a_sign_in_its_view_only(style, intersection):
    with_sign = _scene(left=["Wood Tavern"], intersection=intersection)
    plain = _scene(intersection=intersection)
    size = (96, 96)
    (box,) = sign_boxes(size, 1)
    left_sign = render_view(with_sign, "left", style, 7, size)
    left_plain = render_view(plain, "left", style, 7, size)
    assert _pixels(left_sign, box) != _pixels(left_plain, box)
    # the sign board and its letters: the sign colour fills much of the box, the ink is there too
    colours = {c: n for n, c in left_sign.crop(box).getcolors(1 << 16)}
    s = STYLE[style]
    assert colours.get(s.sign, 0) > 0.4 * (box[2] - box[0]) * (box[3] - box[1])
    letters = sum(n for c, n in colours.items() if math.dist(c, s.ink) < math.dist(c, s.sign) and c != s.sign_edge)
    assert letters > 20  # anti-aliased letters: nearer the ink than the board
    assert s.sign not in {c for _, c in left_plain.crop(box).getcolors(1 << 16)}
    # outside the sign nothing moved, and the other views do not show it
    patched = left_sign.copy()
    patched.paste(left_plain.crop(box), box[:2])
    assert patched.tobytes() == left_plain.tobytes()
    for direction in ("front", "right", "back"):
        assert (
            render_view(with_sign, direction, style, 7, size).tobytes()
            == render_view(plain, direction, style, 7, size).tobytes()
        )


def test_two_landmarks_on_one_side_get_two_signs():
    size = (96, 96)
    boxes = sign_boxes(size, 2)
    assert len(boxes) == 2 and boxes[0][3] < boxes[1][1]
    view = render_view(_scene(right=["Harbor Bank", "The Dutch"]), "right", "id", 0, size)
    for box in boxes:
        assert STYLE["id"].sign in {c for _, c in view.crop(box).getcolors(1 << 16)}


def test_intersection_changes_the_views():
    size = (96, 96)
    for direction in DIRECTIONS:
        a = render_view(_scene(), direction, "id", 2, size)
        b = render_view(_scene(intersection=True), direction, "id", 2, size)
        assert (a.tobytes() == b.tobytes()) == (direction == "back")  # you came along the back street


def test_rendering_is_deterministic_per_point_style_and_seed():
    scene = _scene(left=["Wood Tavern"], right=["The Dutch"], intersection=True)
    a = render_observation(scene, "id", seed=11)
    assert a.tobytes() == render_observation(scene, "id", seed=11).tobytes()
    assert a.tobytes() != render_observation(scene, "id", seed=12).tobytes()
    assert a.tobytes() != render_observation(scene, "ood", seed=11).tobytes()
    assert a.tobytes() != render_observation(_scene(left=["The Dutch"], intersection=True), "id", seed=11).tobytes()
    a.putpixel((0, 0), (1, 2, 3))  # a copy: drawing on it leaves the next render alone
    assert render_observation(scene, "id", seed=11).getpixel((0, 0)) != (1, 2, 3)


def test_bad_drawing_arguments_are_named():
    with pytest.raises(ValueError, match="style"):
        render_observation(_scene(), "sepia")
    with pytest.raises(ValueError, match="minimum"):
        render_observation(_scene(), "id", view_size=(20, 20))
    with pytest.raises(ValueError, match="4 views"):
        compose_views([Image.new("RGB", (64, 64))] * 3, (64, 64))


def test_landmark_phrases_become_signs_in_their_directions():
    assert parse_landmarks("Wood Tavern is on your left, The Dutch is on your right.") == [
        ("Wood Tavern", "left"),
        ("The Dutch", "right"),
    ]
    assert parse_landmarks("Barnes and Noble is on your left and Deli 24 is behind you") == [
        ("Barnes and Noble", "left"),
        ("Deli 24", "back"),
    ]
    assert parse_landmarks("Starbucks is on your front right") == [("Starbucks", "right")]
    assert parse_landmarks("A tall clock tower") == [("A tall clock tower", "front")]
    assert parse_landmarks("") == []
    scene = point_scene(
        {"kind": "intersection", "observation": "Wood Tavern is on your left. You observe an intersection."}
    )
    assert scene == Scene(True, (("left", ("Wood Tavern",)),))
    assert point_scene({"kind": "start", "observation": "No landmarks nearby."}) == Scene(False, ())


# ---------------------------------------------------------------- splits and rows


def test_registry_and_config_section():
    task = get_task("virl_vl")
    assert task.name == "virl_vl" and task_section("virl_vl") == "virl_vl"
    assert task.splits == (*TEXT_SPLITS, EVAL_OOD_VISUAL)
    section = section_with_defaults("virl_vl", {"sizes": SIZES})
    assert section["view_size"] == [128, 128] and section["street_views"] is None
    assert section["cities"] == {"train": 3, "eval": 2, "visual": 2}
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["virl_vl"] = {"sizes": SIZES, "view_size": [96, 96]}
    assert validate_config(config)["virl_vl"]["view_size"] == [96, 96]
    config["virl_vl"] = {"sizes": {k: v for k, v in SIZES.items() if k != EVAL_OOD_VISUAL}}
    with pytest.raises(ConfigError, match="eval_ood_visual"):
        validate_config(config)


def test_splits_sizes_rules_and_looks(splits):
    assert set(splits) == set(SIZES)
    for split, rows in splits.items():
        assert len(rows) == SIZES[split]
        for row in rows:
            assert row["task"] == "virl_vl" and row["split"] == split
            assert row["rule"] == ("ood" if split == "eval_ood_rule" else "id")
            assert row["visual"] == ("ood" if split == EVAL_OOD_VISUAL else "id")
            spec = row["image"]
            assert spec == {**spec, "renderer": RENDERER_VERSION, "source": "drawn", "style": row["visual"]}
            assert spec["view_size"] == CFG["view_size"]
    cities = {split: {r["route"]["city"] for r in rows} for split, rows in splits.items()}
    assert all(c.startswith("visual-") for c in cities[EVAL_OOD_VISUAL])
    assert not cities[EVAL_OOD_VISUAL] & (cities["eval_id"] | cities["rl"] | cities["sft"])
    # the rule pair shares its routes; the visual split draws routes of the same kind elsewhere
    assert [r["route"] for r in splits["eval_id"]] == [r["route"] for r in splits["eval_ood_rule"]]
    image = row_images(splits[EVAL_OOD_VISUAL][0])[0]
    assert image.size == grid_size(CFG["view_size"])


def test_rows_are_json_and_deterministic(splits):
    again = get_task("virl_vl").generate_splits(CFG, 3)
    assert json.dumps(again, sort_keys=True) == json.dumps(splits, sort_keys=True)
    other = get_task("virl_vl").generate_splits(CFG, 4)
    assert json.dumps(other, sort_keys=True) != json.dumps(splits, sort_keys=True)
    assert "Image" not in json.dumps(splits)  # specs, never pixels


def test_sft_rows_carry_one_image_per_observation(splits):
    rows = splits["sft"]
    assert any(row["step_index"] > 2 for row in rows)
    first_of_route = {}
    task = get_task("virl_vl")
    for row in rows:
        images = task.row_images(row)
        assert len(images) == count_image_parts(row["prompt"]) == row["step_index"] + 1
        assert row["completion"] == [
            {"role": "assistant", "content": expert_answer(row["route"], row["step_index"], "id")}
        ]
        assert all(im.size == grid_size(CFG["view_size"]) for im in images)
        # every row of a route shows a point the same way
        key = row["route"]["id"]
        seen = first_of_route.setdefault(key, [])
        for k, image in enumerate(images):
            if k < len(seen):
                assert image.tobytes() == seen[k]
            else:
                seen.append(image.tobytes())
    texts = _image_turn_texts(rows[-1]["prompt"])
    for k, (text, point) in enumerate(zip(texts, rows[-1]["route"]["points"]), start=1):
        assert (
            text == f"O_{k}: {VIEWS_TEXT}{'; ' + INTERSECTION_TEXT if point['kind'] == 'intersection' else ''}\nA_{k}:"
        )


def test_row_images_refuse_a_broken_spec(splits):
    row = copy.deepcopy(splits["rl"][0])
    row["image"]["renderer"] = "views-0"
    with pytest.raises(ValueError, match="regenerate"):
        row_images(row)
    row = copy.deepcopy(splits["rl"][0])
    del row["image"]
    with pytest.raises(ValueError, match=row["id"]):
        row_images(row)


# ---------------------------------------------------------------- episodes


def _play(task, row, answers_for):
    """Play a row's episode; check after every step that the chat only grew and images match."""
    ep = task.make_episode(row, viter=2)
    assert len(ep.images) == count_image_parts(ep.messages) == 1
    snapshots = []
    while not ep.done:
        before = copy.deepcopy(ep.messages)
        ep.step(answers_for(ep))
        assert ep.messages[: len(before)] == before  # only appended
        assert len(ep.messages) > len(before)
        assert len(ep.images) == count_image_parts(ep.messages)
        if not ep.done:
            assert ep.images[-1].tobytes() == point_image(ep.route, row["image"], ep.index).tobytes()
        snapshots.append(len(ep.messages))
    return ep


def test_expert_episode_grows_and_succeeds(splits):
    task = get_task("virl_vl")
    for row in splits["eval_id"] + splits[EVAL_OOD_VISUAL] + splits["eval_ood_rule"]:
        ep = _play(task, row, lambda e: expert_answer(e.route, e.index, e.rule))
        assert ep.success
        assert len(ep.images) == len(row["route"]["points"])
        texts = _image_turn_texts(ep.messages)
        for k, (text, point) in enumerate(zip(texts, row["route"]["points"]), start=1):
            assert text.startswith(f"O_{k}: {VIEWS_TEXT}")
            assert (INTERSECTION_TEXT in text) == (point["kind"] == "intersection")
    metrics = task.aggregate([task.make_episode(r, 2) for r in splits["eval_id"][:1]] + [ep])
    assert {"route_success_rate", "per_step_accuracy"} <= set(metrics)


def test_sft_rows_are_the_expert_episode_cut_at_a_point(splits):
    task = get_task("virl_vl")
    for row in splits["sft"]:
        if row["step_index"] == 0:
            ep = task.make_episode(row, viter=1)
        assert ep.messages == row["prompt"] and ep.index == row["step_index"]
        assert [im.tobytes() for im in ep.images] == [im.tobytes() for im in row_images(row)]
        if ep.index < len(ep.route["points"]) - 1:
            ep.step(row["completion"][0]["content"])


def test_wrong_answers_add_text_feedback_and_no_image(splits):
    task = get_task("virl_vl")
    rng = random.Random(0)

    def sometimes_wrong(ep):
        wrong_here = sum(not a.correct for a in ep.attempts if a.info["step_index"] == ep.index)
        return WRONG if wrong_here == 0 and rng.random() < 0.5 else expert_answer(ep.route, ep.index, ep.rule)

    ep = _play(task, splits["rl"][0], sometimes_wrong)
    assert ep.success and any(not a.correct for a in ep.attempts)
    feedback = [m for m in ep.messages if m["role"] == "user" and isinstance(m["content"], str)]
    assert feedback and all(VIEWS_TEXT in m["content"] for m in feedback)
    assert len(ep.images) == len(ep.route["points"])

    failing = _play(task, splits["rl"][1], lambda e: WRONG)
    assert failing.done and not failing.success and len(failing.images) == 1
    assert task.aggregate([ep, failing])["route_success_rate"] == 0.5


# ---------------------------------------------------------------- restricted unpickler


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_unpickler_refuses_a_global_and_runs_nothing(tmp_path, capfd):
    marker = tmp_path / "pwned"
    path = tmp_path / "mapping.pkl"
    path.write_bytes(pickle.dumps(_Exploit(f"echo pwned; touch {marker}")))
    with pytest.raises(ValueError) as err:
        load_plain(path)
    assert str(path) in str(err.value) and "refused global" in str(err.value) and "system" in str(err.value)
    assert not marker.exists()
    assert "pwned" not in capfd.readouterr().out
    for protocol in (0, 2):  # old protocols name globals differently; still refused
        path.write_bytes(pickle.dumps(_Exploit(f"touch {marker}"), protocol=protocol))
        with pytest.raises(ValueError, match="refused global"):
            load_plain(path)
    assert not marker.exists()


def test_unpickler_accepts_plain_data_and_names_bad_files(tmp_path):
    plain = {(40.7, -74.0): "pano_a", "40.8,-74.1": {"pano_id": "b"}, "n": [1, 2.5, None, True, ("t",), {3}]}
    path = tmp_path / "plain.pkl"
    for protocol in range(4, pickle.HIGHEST_PROTOCOL + 1):
        path.write_bytes(pickle.dumps({**plain, "raw": b"x"}, protocol=protocol))
        assert load_plain(path) == {**plain, "raw": b"x"}
    no_sets = {k: v for k, v in plain.items() if k != "n"}
    for protocol in range(4):  # protocols 0-3 need no global for these either
        path.write_bytes(pickle.dumps(no_sets, protocol=protocol))
        assert load_plain(path) == no_sets
    from collections import OrderedDict

    path.write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(ValueError, match="collections.OrderedDict"):
        load_plain(path)
    path.write_bytes(pickle.dumps(plain)[:-5])
    with pytest.raises(ValueError, match="plain.pkl"):
        load_plain(path)
    with pytest.raises(ValueError, match="missing.pkl"):
        load_plain(tmp_path / "missing.pkl")


# ---------------------------------------------------------------- the paper's street views


def _photo_colour(pano: str, heading: int) -> tuple[int, int, int]:
    r = random.Random(f"{pano}/{heading}")
    return (r.randint(40, 250), r.randint(40, 250), r.randint(40, 250))


def _street_view_folder(tmp_path):
    """Two route files in the official shape, a mapping pickle and one photo per panorama and heading."""
    city = generate_city("nyc", 5, (5, 5))
    rng = random.Random(1)
    infos = []
    while len(infos) < 8:
        info = sample_route_info(city, rng, 2)
        if info is not None:
            infos.append(info)
    (tmp_path / "routes.json").write_text(json.dumps([infos[:6], 6]))
    (tmp_path / "vln_mini.json").write_text(json.dumps([infos[6:], 2]))
    folder = tmp_path / "sv"
    (folder / PHOTO_DIR).mkdir(parents=True)
    cfg = section_with_defaults("virl_vl", {"sizes": SIZES})
    mapping = {}
    for i, info in enumerate(infos):
        info = {**info, "init_heading": info["init_heading"]}
        for point in build_route(info, cfg, f"r{i}", "nyc")["points"]:
            lat, lng = point["geocode"]
            mapping.setdefault(f"{lat},{lng}", f"pano_{len(mapping)}")
    with open(folder / "gps_to_pano.pkl", "wb") as f:
        pickle.dump(mapping, f)
    for pano in mapping.values():
        for heading in (0, 90, 180, 270):
            Image.new("RGB", (40, 30), _photo_colour(pano, heading)).save(folder / PHOTO_DIR / f"{pano}_{heading}.png")
    config = {
        "routes": str(tmp_path / "routes.json"),
        "visual_routes": str(tmp_path / "vln_mini.json"),
        "street_views": str(folder),
        "view_size": [48, 48],
        "eval_fraction": 0.34,
        "sizes": SIZES,
    }
    return folder, mapping, config


def _unique_point(routes, cfg, skip=()):
    """(route index, point) of a point whose GPS position no other route passes (its photos are its own)."""
    built = [build_route(info, cfg, f"r{i}", "nyc") for i, info in enumerate(routes)]
    where = {}
    for i, route in enumerate(built):
        for point in route["points"]:
            where.setdefault(tuple(point["geocode"]), set()).add(i)
    for i, route in enumerate(built):
        for point in route["points"]:
            if i not in skip and where[tuple(point["geocode"])] == {i}:
                return i, point
    raise AssertionError("every point is shared")


def _route_key(route):
    return route["start_place"], tuple(route["instruction"])


def test_street_view_rows_show_the_photos(tmp_path):
    folder, mapping, config = _street_view_folder(tmp_path)
    splits = get_task("virl_vl").generate_splits(config, 0)
    row = splits["eval_id"][0]
    spec = row["image"]
    assert spec["source"] == "street_views" and spec["folder"] == str(folder)
    assert len(spec["views"]) == len(row["route"]["points"]) and all(len(v) == 4 for v in spec["views"])
    point = row["route"]["points"][0]
    pano = mapping[f"{point['geocode'][0]},{point['geocode'][1]}"]
    image = row_images(row)[0]
    assert image.size == grid_size((48, 48))
    boxes = view_boxes((48, 48))
    for turn, direction in zip((0, 90, 180, 270), DIRECTIONS):
        target = (point["heading"] + turn) % 360
        gaps = {h: abs((h - target + 180) % 360 - 180) for h in (0, 90, 180, 270)}
        heading = min(gaps, key=lambda h: (gaps[h], f"{pano}_{h}.png"))  # the nearest photo
        left, top, *_ = boxes[direction]
        assert image.getpixel((left + 24, top + 24)) == _photo_colour(pano, heading)
    assert all(r["route"]["city"] == "visual" for r in splits[EVAL_OOD_VISUAL])
    ep = get_task("virl_vl").make_episode(row, 2)
    ep.step(expert_answer(ep.route, 0, "id"))
    assert len(ep.images) == count_image_parts(ep.messages) == 2


def test_missing_view_or_bad_pickle_skips_only_that_route(tmp_path, caplog):
    folder, mapping, config = _street_view_folder(tmp_path)
    routes = json.loads((tmp_path / "routes.json").read_text())[0]
    visual = json.loads((tmp_path / "vln_mini.json").read_text())[0]
    cfg = section_with_defaults("virl_vl", config)
    index, victim = _unique_point(routes + visual, cfg, skip=range(len(routes), len(routes) + len(visual)))
    pano = mapping[f"{victim['geocode'][0]},{victim['geocode'][1]}"]
    for heading in (0, 90, 180, 270):
        (folder / PHOTO_DIR / f"{pano}_{heading}.png").unlink()
    (folder / "extra.pkl").write_bytes(pickle.dumps(_Exploit(f"touch {tmp_path / 'pwned'}")))
    with caplog.at_level(logging.WARNING, logger="sftvsrl.tasks.virl_vl"):
        splits = get_task("virl_vl").generate_splits(config, 0)
    assert not (tmp_path / "pwned").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert any("extra.pkl" in m and "refused global" in m for m in messages)
    skipped = [m for m in messages if "skipped route" in m]
    assert len(skipped) == 1 and f"{pano}_" in skipped[0] and str(folder / PHOTO_DIR) in skipped[0]
    used = {_route_key(r["route"]) for rows in splits.values() for r in rows}
    assert _route_key(build_route(routes[index], cfg, "victim", "nyc")) not in used
    assert len(used) == len(routes) - 1 + len(visual)  # the other routes and the visual routes


def test_unreadable_photo_skips_the_route_and_a_vanished_one_names_the_file(tmp_path, caplog):
    folder, _, config = _street_view_folder(tmp_path)
    splits = get_task("virl_vl").generate_splits(config, 0)
    cfg = section_with_defaults("virl_vl", config)
    routes = [r["route"] for r in splits["sft"] + splits["eval_id"]]
    by_key = {_route_key(r): r for r in routes}
    everything = (
        json.loads((tmp_path / "routes.json").read_text())[0] + json.loads((tmp_path / "vln_mini.json").read_text())[0]
    )
    index, point = _unique_point(everything, cfg, skip=range(6, 8))
    route = by_key[_route_key(build_route(everything[index], cfg, "x", "nyc"))]
    row = next(r for rows in splits.values() for r in rows if r["route"]["id"] == route["id"] and r["step_index"] == 0)
    k = next(k for k, p in enumerate(route["points"]) if p["geocode"] == point["geocode"])
    name = row["image"]["views"][k][0]
    (folder / PHOTO_DIR / name).unlink()
    with pytest.raises(ValueError, match=name):
        point_image(row["route"], row["image"], k)
    (folder / PHOTO_DIR / name).write_bytes(b"not an image")
    from sftvsrl.tasks import virl_vl

    virl_vl._street_views.cache_clear()
    with caplog.at_level(logging.WARNING, logger="sftvsrl.tasks.virl_vl"):
        again = get_task("virl_vl").generate_splits(config, 0)
    assert any(name in r.getMessage() and "cannot read" in r.getMessage() for r in caplog.records)
    assert row["route"]["id"] not in {r["route"]["id"] for rows in again.values() for r in rows}


def test_street_view_config_errors_name_the_keys(tmp_path):
    task = get_task("virl_vl")
    with pytest.raises(ValueError, match="virl_vl.street_views needs virl_vl.routes"):
        task.check_config({"street_views": str(tmp_path), "sizes": SIZES}, 0)
    with pytest.raises(ValueError, match="virl_vl.visual_routes"):
        task.check_config({"routes": str(tmp_path / "r.json"), "sizes": SIZES}, 0)
    _, _, config = _street_view_folder(tmp_path)
    (tmp_path / "sv" / "gps_to_pano.pkl").unlink()
    with pytest.raises(ValueError, match=r"no \*.pkl mapping"):
        task.generate_splits(config, 0)
