"""`python -m training ...`: the training commands without Flask."""
from .cli import main

if __name__ == "__main__":
    main()
