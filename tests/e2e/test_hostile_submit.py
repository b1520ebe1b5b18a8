"""Hostile input through the real programs: ``encodeflow submit`` as a user runs it, and jobs a
foreign BullMQ producer puts straight on the queue of a real ``farm-node`` process.

Files come from tests/farm/test_hostile_inputs.py's makers. What is asserted is what a user sees:
the exit code and the one line on stderr, the job's status, attempts and error, the keys and files
in storage; and what must never happen: a referenced file opened (watched with FIFOs), FFmpeg given
a user's file name, a key outside its prefix, a job retried for a reason a retry cannot fix.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import unicodedata
import uuid
from pathlib import Path

import pytest
from bullmq import Queue

from farm.client import Farm, UnknownJobError
from farm.domain.media import find_ffmpeg, probe
from farm.domain.object_keys import sanitize_name
from farm.services.storage import open_storage
from farm_node.workdir import entries
from tests.bull import bull_job
from tests.e2e.helpers import json_lines, run_cli, wait_for
from tests.farm.test_hostile_inputs import (
    FifoWatch,
    audio_only,
    concat_list,
    cut_in_half,
    fifo,
    hls_playlist,
    huge_frame,
    image_named,
    reference_movie,
    remux,
    sdp_file,
    still_video,
    zero_frames,
)

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``encodeflow ARGS`` run from ``cwd``, as a user in a terminal would."""
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=os.environ.copy(),
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def stored_files(settings) -> list[str]:
    root = Path(open_storage(settings.effective_storage_url).root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def nothing_was_submitted(settings) -> None:
    assert stored_files(settings) == [], "nothing may be uploaded"
    farm = Farm(settings, start_embedded=False)
    try:
        assert farm.jobs() == [], "no job may be recorded"
    finally:
        farm.close()
    assert not (settings.embedded_redis_dir / "server.json").exists(), "the queue is not even needed"


# -- refused at submit ------------------------------------------------------------------------


def test_broken_and_crafted_files_are_refused_at_submit_and_nothing_is_uploaded(make_clip, tmp_path, settings):
    good = make_clip(160, 120, 1.0)
    files = tmp_path / "files"
    files.mkdir()
    (files / "empty.mp4").write_bytes(b"")
    (files / "notes.mp4").write_text("meeting notes, not a video\n" * 30)
    cut_in_half(remux(good, tmp_path / "fast.mp4", "-movflags", "+faststart"), files / "cut.mp4")
    image_named(files / "poster.mp4", ".png")
    image_named(files / "photo.mp4", ".jpg")
    audio_only(files / "podcast.mp4")
    huge_frame(files / "huge.avi")
    zero_frames(files / "nothing.mkv")
    still_video(files / "marathon.mp4", hours=25)
    expected = {
        "empty.mp4": "empty.mp4 is empty",
        "notes.mp4": "notes.mp4 is not a video FFmpeg can read",
        "cut.mp4": "cut.mp4 is truncated: its structure needs ",
        "poster.mp4": "poster.mp4 is an image, not a video",
        "photo.mp4": "photo.mp4 is an image, not a video",
        "podcast.mp4": "podcast.mp4 has no video stream",
        "huge.avi": "huge.avi is 16384x16384; the largest frame EncodeFlow accepts is 8192x8192",
        "nothing.mkv": "nothing.mkv holds no video frames",
        "marathon.mp4": "marathon.mp4 lasts 25:00:00; the longest video EncodeFlow accepts lasts 24:00:00",
    }

    result = cli("submit", str(good), *expected, "--wait", cwd=files)

    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("encodeflow submit: ")
    for name, reason in expected.items():
        assert f"{name}: {reason}" in line, (name, line)
    assert str(good) not in line, "the good file is not blamed"
    nothing_was_submitted(settings)


def test_a_name_starting_with_a_dash_is_not_taken_for_an_option(make_clip, tmp_path, settings):
    (tmp_path / "-i.mp4").write_bytes(make_clip(160, 120, 1.0).read_bytes())
    result = cli("submit", "-i.mp4", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    one_line(result.stderr)
    nothing_was_submitted(settings)


@pytest.fixture
def references(make_clip, tmp_path) -> dict[str, tuple[Path, Path | None, list[str]]]:
    """name -> (file to submit, the FIFO it references or None, control command that opens it)."""
    ff = find_ffmpeg()
    made = {}

    def case(name: str) -> Path:
        folder = tmp_path / "refs" / name.replace(".", "_")
        folder.mkdir(parents=True)
        return folder

    targets = tmp_path / "elsewhere"
    targets.mkdir()
    for name in ("stream.m3u8", "playlist.mp4"):
        segment = fifo(targets / f"{name}.segment.ts")
        # FFmpeg 7+ no longer guesses HLS for a name without .m3u8; read as HLS, it follows it.
        made[name] = (hls_playlist(case(name) / name, segment), segment, [ff, "-f", "hls", "-i"])
    folder = case("list.mp4")
    made["list.mp4"] = (concat_list(folder / "list.mp4", "secret.mp4"), fifo(folder / "secret.mp4"), [ff, "-i"])
    folder = case("movie.mov")
    source = remux(make_clip(160, 120, 1.0, audio=False), tmp_path / "source.mov")
    made["movie.mov"] = (
        reference_movie(source, folder / "movie.mov", "secret.mp4"),
        fifo(folder / "secret.mp4"),
        [ff, "-enable_drefs", "1", "-i"],
    )
    made["camera.sdp"] = (sdp_file(case("camera.sdp") / "camera.sdp"), None, [])
    return made


REFERENCE_REASONS = {
    "stream.m3u8": "stream.m3u8 is an HLS/M3U playlist, not a video",
    "playlist.mp4": "playlist.mp4 is an HLS/M3U playlist, not a video",
    "list.mp4": "list.mp4 is an FFmpeg concat list, not a video",
    "movie.mov": "movie.mov is a reference movie: its media lives in other files",
    "camera.sdp": "camera.sdp is an SDP session description (it points at network streams), not a video",
}


def test_references_are_refused_at_submit_and_never_opened(references, settings, tmp_path):
    fifos = [target for _, target, _ in references.values() if target]
    for path, target, control in references.values():  # plain FFmpeg follows each reference
        if target:
            with FifoWatch(target) as watch:
                subprocess.run(
                    [*control, str(path), "-f", "null", "-"],
                    capture_output=True,
                    timeout=60,
                    stdin=subprocess.DEVNULL,
                    cwd=path.parent,
                )
            assert watch.opened == [target], f"control: FFmpeg should open what {path.name} references"

    with FifoWatch(*fifos) as watch:
        result = run_cli("submit", *(str(path) for path, _, _ in references.values()))

    assert watch.opened == [], "the CLI opened a file that an input references"
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    for name, reason in REFERENCE_REASONS.items():
        assert reason in line, (name, line)
    nothing_was_submitted(settings)


# -- jobs that another producer put on the queue ------------------------------------------------


def bull_add(redis_url: str, queue: str, job_id: str, payload: dict) -> None:
    """What any BullMQ producer (Node.js BullMQ producers included) does to enqueue a job."""

    async def add():
        bull = Queue(queue, {"connection": redis_url})
        try:
            await bull.add(
                "transcode", payload, {"jobId": job_id, "attempts": 3, "backoff": {"type": "fixed", "delay": 200}}
            )
        finally:
            await bull.close()

    asyncio.run(add())


def ended(farm: Farm, job_id: str) -> dict | None:
    try:
        job = farm.show(job_id).to_json()
    except UnknownJobError:
        return None
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def test_a_node_fails_each_hostile_foreign_job_once_and_opens_nothing_else(local_farm, references, make_clip, tmp_path):
    (node,) = local_farm(1)
    settings = local_farm.settings
    storage = open_storage(settings.effective_storage_url)
    good = make_clip(160, 120, 1.0)
    broken = tmp_path / "broken"
    broken.mkdir()
    inputs = {name: path for name, (path, _, _) in references.items()}
    inputs.update(
        {
            "cut.mp4": cut_in_half(remux(good, tmp_path / "fast.mp4", "-movflags", "+faststart"), broken / "cut.mp4"),
            "huge.avi": huge_frame(broken / "huge.avi"),
            "marathon.mp4": still_video(broken / "marathon.mp4", hours=25),
            "podcast.mp4": audio_only(broken / "podcast.mp4"),
        }
    )
    reasons = dict(
        REFERENCE_REASONS,
        **{
            "cut.mp4": "cut.mp4 is truncated",
            "huge.avi": "huge.avi is 16384x16384",
            "marathon.mp4": "marathon.mp4 lasts 25:00:00",
            "podcast.mp4": "podcast.mp4 has no video stream",
        },
    )
    watched, jobs = [], {}
    for name, path in inputs.items():
        job_id, video_id = str(uuid.uuid4()), str(uuid.uuid4())
        key = f"inputs/{video_id}/{name}"
        storage.upload_file(path, key)
        target = references.get(name, (None, None))[1]
        if target is not None and target.parent != tmp_path / "elsewhere":
            # A relative reference resolves next to the node's copy of the input, in the job's dir.
            job_dir = node.work_dir / f"{job_id}-1"
            job_dir.mkdir(parents=True)
            target = fifo(job_dir / target.name)
        if target is not None:
            watched.append(target)
        jobs[name] = (job_id, key, target)
    farm = Farm(settings, start_embedded=False)

    with FifoWatch(*watched) as watch:
        for name, (job_id, key, _) in jobs.items():
            bull_add(
                local_farm.redis_url,
                settings.queue,
                job_id,
                {
                    "jobId": job_id,
                    "input": {"key": key, "name": name},
                    "outputConfig": {"resolution": "360p", "format": "mp4", "includeAudio": True},
                },
            )
        for name, (job_id, _, _) in jobs.items():
            wait_for(lambda job_id=job_id: ended(farm, job_id), timeout=120, what=f"the job for {name} to end")

    assert watch.opened == [], "the node opened a file that an input references"
    for name, (job_id, _, target) in jobs.items():
        job = farm.show(job_id).to_json()
        assert (job["status"], job["attempts"], job["output"]) == ("failed", 1, None), (name, job)
        assert job["error"].startswith(reasons[name]), (name, job["error"])
        state, bull = bull_job(local_farm.redis_url, settings.queue, job_id)
        assert (state, bull.attemptsMade) == ("failed", 1), f"{name}: a retry cannot fix it"
        if target is not None and target.parent.parent == node.work_dir:
            assert not target.parent.exists(), "the job ran in the dir the reference points into"
    farm.close()
    assert entries(node.work_dir) == []


# -- hostile names, transcoded for real ----------------------------------------------------------

HOSTILE_NAMES = [
    "with space.mp4",
    'it\'s a "quoted" name.mp4',
    "$HOME $(id) `id` ;rm -rf.mp4",
    "Caf\u00e9.mp4",  # NFC
    "Cafe\u0301.mp4",  # the same name in NFD: another file on Linux
    "-i.mp4",
    "line\nbreak.mp4",
    "..\\..\\back\\slash.mp4",
    "concat:a|b.mp4",
    ".hidden.mp4",
    "CON.mp4",
    "日本語 ビデオ.mp4",
    "é" * 100 + ".mp4",
]


def ffmpeg_logger(tmp_path: Path) -> tuple[Path, Path]:
    """An ``ENCODEFLOW_FFMPEG`` that writes each argv (NUL-separated) to a file, then runs FFmpeg."""
    calls = tmp_path / "ffmpeg-calls"
    calls.mkdir()
    wrapper = tmp_path / "ffmpeg-logger"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"log={shlex.quote(str(calls))}/$$.args\n"
        'for arg in "$@"; do printf \'%s\\0\' "$arg" >> "$log"; done\n'
        f'exec {shlex.quote(find_ffmpeg())} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, calls


def transcode_calls(calls: Path) -> list[list[str]]:
    runs = [p.read_bytes().split(b"\0")[:-1] for p in sorted(calls.iterdir())]
    return [[arg.decode() for arg in run] for run in runs if b"-i" in run]


def test_hostile_names_transcode_and_never_reach_ffmpeg_or_escape_their_keys(
    local_farm, make_clip, tmp_path, monkeypatch
):
    clip = make_clip(160, 120, 1.0)
    files = tmp_path / "files"
    files.mkdir()
    for name in HOSTILE_NAMES:
        (files / name).write_bytes(clip.read_bytes())
    still_video(files / "ten hours.mp4", hours=10)
    names = [*HOSTILE_NAMES, "ten hours.mp4"]
    assert len(set(os.listdir(files))) == len(names)
    wrapper, calls = ffmpeg_logger(tmp_path)
    monkeypatch.setenv("ENCODEFLOW_FFMPEG", str(wrapper))  # for the node, started now
    (node,) = local_farm(1)

    # Relative names after "--", from the folder that holds them: what a shell user types.
    result = cli("submit", "--resolution", "360p", "--wait", "--json", "--timeout", "600", "--", *names, cwd=files)

    assert result.returncode == 0, result.stderr
    jobs = json_lines(result.stdout)
    assert [job["video"]["name"] for job in jobs] == names
    for name, job in zip(names, jobs, strict=True):
        assert (job["status"], job["attempts"], job["error"]) == ("completed", 1, None), (name, job)
        video = job["video"]
        assert video["key"] == f"inputs/{video['id']}/{sanitize_name(name)}"
        stored = job["output"]["key"].split("/")
        assert stored[:3] == ["outputs", job["id"], "attempt-1"] and len(stored) == 4
        assert stored[3] == sanitize_name(stored[3]) and stored[3].endswith(".mp4")
        assert stored[3].startswith(Path(sanitize_name(name)).stem[:20]), (name, stored[3])
        if len(name) < 100:  # a name at the length cap loses the rendition part, never its prefix
            assert stored[3].endswith("-360p-mp4.mp4"), stored[3]
    by_name = dict(zip(names, jobs, strict=True))
    nfc, nfd = by_name["Caf\u00e9.mp4"], by_name["Cafe\u0301.mp4"]
    assert nfc["video"]["key"].endswith("/Caf\u00e9.mp4") and nfd["video"]["key"].endswith("/Caf\u00e9.mp4")
    assert nfc["video"]["key"] != nfd["video"]["key"] and unicodedata.is_normalized("NFC", nfd["output"]["key"])
    long_one = by_name["ten hours.mp4"]
    assert long_one["video"]["duration"] == pytest.approx(36000)

    # Storage holds exactly the inputs and the outputs, each inside its own prefix.
    settings = local_farm.settings
    stored = stored_files(settings)
    assert len(stored) == 2 * len(names)
    for key in stored:
        assert re.fullmatch(rf"inputs/{UUID}/[^/]+|outputs/{UUID}/attempt-1/[^/]+", key), key
    root = Path(open_storage(settings.effective_storage_url).root)
    out = probe(root / long_one["output"]["key"])
    assert (out.video_codec, out.duration) == ("h264", pytest.approx(36000, abs=1))
    assert probe(root / by_name["-i.mp4"]["output"]["key"]).audio_codec == "aac"

    # FFmpeg saw scratch names in the node's work dir, each behind the guard, never a user's name.
    runs = transcode_calls(calls)
    assert len(runs) == len(names)
    work = str(node.work_dir)
    for args in runs:
        i = args.index("-i")
        assert args[i - 4 : i] == ["-protocol_whitelist", "file", "-f", "mov"], args
        source, target = args[i + 1], args[-1]
        assert source.startswith(f"file:{work}/") and Path(source).name == "input.mp4", args
        assert target.startswith(f"file:{work}/") and Path(target).name == "output.mp4", args
        for name in names:
            assert not any(name in arg or Path(name).stem in arg for arg in args if len(Path(name).stem) > 3), name
        assert "-i.mp4" not in args
