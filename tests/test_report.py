"""``hither-fs report --html``: the page's rules, and the page itself rendered by headless Chromium.

The rendering test needs Debian's ``chromium`` (tests/run.sh installs it): it
fails under CI without it, and skips with the reason elsewhere.
"""

import os
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

import hither_fs as hi
from conftest import REPO, missing_infrastructure, run_python
from hither_fs import cli, listing, report
from jobfuncs import sleepy

GREEN = tuple(int(report.COLOURS['finished'][i:i + 2], 16) for i in (1, 3, 5))
RED = tuple(int(report.COLOURS['error'][i:i + 2], 16) for i in (1, 3, 5))


def row(job_id, worker, start, end, status='finished', submitted=0.0, run='r1', function='f'):
    return {'id': job_id, 'function': function, 'status': status, 'run': run, 'label': '', 'submitted': submitted,
            'start': start, 'end': end, 'worker': worker, 'host': 'h', 'error': ''}


def test_jobs_running_at_once_on_a_worker_get_lanes_of_their_own():
    rows = [row('a', 'w1', 0, 10), row('b', 'w1', 1, 3), row('c', 'w1', 3, 5), row('d', 'w2', 0, 1),
            row('e', 'w1', 11, 12)]
    lanes = report._lanes(rows)
    assert [(name.split()[0], [r['id'] for r in jobs]) for name, jobs in lanes] == [
        ('w1', ['a', 'e']), ('w1', ['b', 'c']), ('w2', ['d'])]


def test_a_run_is_named_by_a_unique_prefix_else_the_newest_is_shown():
    rows = [row('a', 'w', 1, 2, run='20260101-x', submitted='2026-01-01T00:00:01Z'),
            row('b', 'w', 1, 2, run='20260102-y', submitted='2026-01-02T00:00:05Z'),
            row('c', 'w', 1, 2, run='20260102-z', submitted='2026-01-02T00:00:03Z')]
    assert listing.newest_run(rows) == '20260102-y'
    assert listing.select(rows, run='20260101') == [rows[0]]
    with pytest.raises(ValueError, match="run '20260102' is ambiguous"):
        listing.select(rows, run='20260102')
    with pytest.raises(ValueError, match="no run 'nope'"):
        listing.select(rows, run='nope')


def read_png(path):
    """The pixels of a PNG file Chromium wrote (8-bit RGB or RGBA, not interlaced) as an array."""
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    pos, idat, header = 8, b'', None
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b'IHDR':
            header = struct.unpack('>IIBBBBB', body)
        elif kind == b'IDAT':
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, dtype=np.int32)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        else:  # Sub, Average, Paeth depend on the pixel to the left: byte by byte
            for i in range(stride):
                left = cur[i - channels] if i >= channels else 0
                up, up_left = prev[i], (prev[i - channels] if i >= channels else 0)
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - up_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else up_left)
                cur[i] = (line[i] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out.reshape(height, width, channels)[:, :, :3]


def chromium():
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None:
        missing_infrastructure("no 'chromium' on PATH: `sudo apt install chromium` (tests/run.sh installs it)")
    return exe


def test_the_report_page_shows_the_run_as_chromium_draws_it(root_path, parallel, tmp_path):
    exe = chromium()
    # an earlier run (another process) in the same root, which the page leaves out
    proc = run_python('import hither_fs as hi; from jobfuncs import echo; echo.run(x=1).wait()')
    assert proc.returncode == 0, proc.stderr
    with hi.Config(job_handler=parallel(2)):
        done = [sleepy.run(seconds=0.4 + 0.2 * i) for i in range(5)]
        with hi.Config(job_timeout=1.0):
            failed = [sleepy.run(seconds=60)]
        for j in done:
            j.wait(timeout=60)
        with pytest.raises(hi.JobTimeoutError):
            failed[0].wait(timeout=60)
    assert cli.main(['report', '--html', str(tmp_path / 'page.html')]) == 0
    page = (tmp_path / 'page.html').read_text()
    # self-contained: nothing loaded, no script
    assert re.findall(r'https?://[^"\s]*', page) == ['http://www.w3.org/2000/svg']
    assert '<script' not in page and 'src=' not in page and 'href=' not in page
    assert '6 jobs: 5 finished, 1 error' in page and 'JobTimeoutError' in page

    shot = tmp_path / 'page.png'
    proc = subprocess.run([exe, '--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars',
                           '--screenshot=' + str(shot), '--window-size=1200,900', (tmp_path / 'page.html').as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    pixels = read_png(str(shot))
    green = np.all(pixels == GREEN, axis=2).sum()
    red = np.all(pixels == RED, axis=2).sum()
    # each bar's area is its run time: green (done) against red (failed) as the jobs' own times
    times = {}
    for j in done + failed:
        info = j.get_runtime_info()
        times.setdefault(j.status, []).append(listing.parse_time(info['end']) - listing.parse_time(info['start']))
    legend = 12 * 12  # one legend square of each colour
    assert green > legend and red > legend
    expected = sum(times['finished']) / sum(times['error'])
    assert abs((green - legend) / (red - legend) / expected - 1) < 0.15, (green, red, times)
    # the DOM Chromium built: the per-function table
    dom = subprocess.run([exe, '--headless', '--no-sandbox', '--disable-gpu', '--dump-dom',
                          (tmp_path / 'page.html').as_uri()], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path)).stdout
    table = dom[dom.index('id="functions"'):dom.index('</table>', dom.index('id="functions"'))]
    assert re.search(r'<td>sleepy</td><td>6</td><td>5</td><td>1</td>', table)


def test_the_report_example_writes_its_page(root_path, tmp_path):
    proc = run_python(os.path.join(REPO, 'examples', 'report_example.py'), cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert '2 of 4 summaries computed' in proc.stdout
    assert re.search(r'wrote report.html \(36 jobs of run \S+\)', proc.stdout)
    page = (tmp_path / 'report.html').read_text()
    assert '36 jobs: 32 finished, 4 error' in page and 'fit did not converge for sample 10' in page
