# Source me: puts the venv (ROS 2 prefix) and this package's install/ on the paths, the way
# `source install/setup.bash` does on a system ROS 2. Sources in the repo win over install/.
_dff_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_dff_venv=${DFF_VENV:-$_dff_root/.venv}
_dff_py=$("$_dff_venv/bin/python" -c 'import sys; print("python%d.%d" % sys.version_info[:2])')
export VIRTUAL_ENV=$_dff_venv
export PATH="$_dff_venv/bin:$PATH"
export AMENT_PREFIX_PATH="$_dff_root/install:$_dff_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_dff_root/install:$_dff_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$_dff_root/install/lib:$_dff_venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$_dff_root:$_dff_root/install/lib/$_dff_py/site-packages${PYTHONPATH:+:$PYTHONPATH}"
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
# large shared-memory segments: ~2.8x the activation throughput of Fast DDS's defaults
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$_dff_root/config/fastdds_profile.xml}
# large copies kept off glibc's `rep movsb` (dff_ros/memcopy.py); matmuls that give the same bits
# for any thread count and OpenMP workers that do not spin on busy cores (dff_ros/numerics.py)
eval "$(PYTHONPATH=$_dff_root "$_dff_venv/bin/python" -m dff_ros.procenv)"
mkdir -p "$_dff_root/log"
unset _dff_root _dff_venv _dff_py
