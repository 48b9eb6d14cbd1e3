import sys

from sb3_flow.zoo import main

if __name__ == "__main__":
    sys.exit(main())
