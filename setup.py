from setuptools import find_packages, setup

# Core (FF algorithm, data, config, CLI) installs with pip and needs no ROS; the ROS 2 build
# (package.xml / CMakeLists.txt) installs the same sources next to the generated interfaces.
setup(
    name="dff_ros",
    version="0.1.0",
    packages=find_packages(include=["dff_ros", "dff_ros.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "numpy", "pyyaml"],
    extras_require={"test": ["pytest", "hypothesis"], "plots": ["matplotlib"]},
    entry_points={"console_scripts": ["dff-ros = dff_ros.cli:main"]},
)
