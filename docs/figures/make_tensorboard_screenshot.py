"""Screenshot of TensorBoard with the demo's training and held-out (eval/) loss curves.

Makes docs/figures/demo_tensorboard.png in headless Chromium:

    python docs/figures/make_tensorboard_screenshot.py --model_dir=/tmp/demo_tb

If MODEL_DIR has no tensorboard/ folder, the demo's training step runs into it first (a few
minutes on CPU; the demo evaluates held-out data every 100 steps). Needs the project's
.venv (TensorBoard comes with TensorFlow) and a Chromium binary (Debian: `apt-get install
chromium`, or --chromium=PATH). Standard library only, plus Pillow if present to shrink the
PNG to a palette. Nothing in the test suite uses it.

TensorBoard's scalars dashboard reads "ignore outliers in chart scaling" (on by default,
which clips the first training steps off the charts) from the page's localStorage only, so
the browser is pointed at a small same-origin proxy that serves one page setting it off and
then forwards everything else to TensorBoard.
"""

import argparse
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_for(port, path, timeout):
  """Waits until TensorBoard answers `path` with the same non-empty body twice in a row."""
  deadline, last = time.time() + timeout, None
  while time.time() < deadline:
    try:
      conn = http.client.HTTPConnection('127.0.0.1', port, timeout=5)
      conn.request('GET', path)
      response = conn.getresponse()
      body = response.read()
      if response.status == 200 and body.strip() not in (b'', b'{}', b'[]'):
        if body == last:
          return
        last = body
    except OSError:
      pass
    time.sleep(2)
  raise TimeoutError(f'TensorBoard on port {port} did not answer {path} in {timeout}s')


def proxy_handler(tb_port, target):
  seed = (
      '<!doctype html><script>'
      'localStorage.setItem("_ignoreYOutliers", "false");'
      f'location.replace({target!r});'
      '</script>').encode()

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path == '/__seed':
        self.send_response(200)
        self.send_header('Content-Type', 'text/html')
        self.send_header('Content-Length', str(len(seed)))
        self.end_headers()
        self.wfile.write(seed)
        return
      self.forward('GET')

    def do_POST(self):  # pylint: disable=invalid-name
      self.forward('POST')

    def forward(self, method):
      length = int(self.headers.get('Content-Length') or 0)
      data = self.rfile.read(length) if length else None
      conn = http.client.HTTPConnection('127.0.0.1', tb_port, timeout=60)
      headers = {k: v for k, v in self.headers.items() if k.lower() != 'host'}
      conn.request(method, self.path, body=data, headers=headers)
      response = conn.getresponse()
      body = response.read()
      self.send_response(response.status)
      for key, value in response.getheaders():
        if key.lower() not in ('transfer-encoding', 'connection', 'content-length'):
          self.send_header(key, value)
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  return Handler


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model_dir', default='/tmp/demo_tb')
  parser.add_argument('--output', default=os.path.join(ROOT, 'docs/figures/demo_tensorboard.png'))
  parser.add_argument('--tag_filter', default='loss',
                      help='regex of the scalars shown: loss matches the total training loss, '
                      'each objective\'s training loss <task>/loss and held-out eval/<task>/loss')
  parser.add_argument('--window', default='1780,1040', help='browser window width,height')
  parser.add_argument('--chromium', default=None)
  parser.add_argument('--colors', type=int, default=128, help='palette size (0 keeps RGB)')
  args = parser.parse_args()

  chromium = args.chromium or next(
      (p for p in map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome')) if p),
      None)
  if not chromium:
    sys.exit('no Chromium found: apt-get install chromium, or pass --chromium=PATH')
  venv_bin = os.path.join(ROOT, '.venv', 'bin')
  python = os.path.join(venv_bin, 'python') if os.path.exists(venv_bin) else sys.executable
  logdir = os.path.join(args.model_dir, 'tensorboard')

  if not os.path.isdir(logdir):
    tunables = subprocess.run([python, '-m', 'ernie3_jax.runtime.host_memory'], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([
        python, '-m', 'ernie3_jax.cli.main', '--gin_file=gin_configs/experiments/demo.gin',
        f"--gin.MODEL_DIR='{args.model_dir}'", '--run_mode=train'
    ], cwd=ROOT, check=True, env={**os.environ, 'GLIBC_TUNABLES': tunables})

  tb_port = free_port()
  with tempfile.TemporaryDirectory() as tmp:
    tensorboard = subprocess.Popen(
        [python, '-m', 'tensorboard.main', '--logdir', logdir, '--host', '127.0.0.1',
         '--port', str(tb_port)],
        stdout=open(os.path.join(tmp, 'tensorboard.log'), 'w'), stderr=subprocess.STDOUT)
    server = None
    try:
      wait_for(tb_port, '/data/plugin/scalars/tags', timeout=180)
      wait_for(tb_port, '/data/plugin/scalars/scalars?run=.&tag=loss', timeout=60)
      target = ('/?darkMode=false#scalars&tagFilter=' +
                urllib.parse.quote(args.tag_filter, safe='') + '&_smoothingWeight=0')
      server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), proxy_handler(tb_port, target))
      threading.Thread(target=server.serve_forever, daemon=True).start()
      url = f'http://127.0.0.1:{server.server_address[1]}/__seed'
      shot = os.path.join(tmp, 'shot.png')
      # SwiftShader gives headless Chromium the WebGL the charts may use; the virtual time
      # budget lets the dashboard fetch the scalars and draw them before the capture.
      subprocess.run([
          chromium, '--headless', '--no-sandbox', '--disable-gpu', '--use-gl=swiftshader',
          '--enable-unsafe-swiftshader', '--hide-scrollbars', f'--window-size={args.window}',
          '--virtual-time-budget=30000', f'--user-data-dir={os.path.join(tmp, "profile")}',
          f'--screenshot={shot}', url
      ], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    finally:
      if server is not None:
        server.shutdown()
      tensorboard.terminate()
      tensorboard.wait(timeout=30)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    try:
      from PIL import Image  # pylint: disable=import-outside-toplevel
    except ImportError:
      Image = None
    if Image is None or args.colors <= 0:
      shutil.copyfile(shot, args.output)
    else:
      image = Image.open(shot).convert('RGB')
      image = image.quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT)
      image.save(args.output, optimize=True)
  print(f'wrote {args.output} ({os.path.getsize(args.output)} bytes) from {logdir}')


if __name__ == '__main__':
  main()
