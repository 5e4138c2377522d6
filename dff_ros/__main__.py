import sys

from dff_ros.cli import main

sys.exit(main())
