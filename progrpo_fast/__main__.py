import sys

from progrpo_fast.cli import main

sys.exit(main())
