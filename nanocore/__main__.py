"""`python -m nanocore start|stop|status|halt|import-nano`."""

from nanocore.cli import main

if __name__ == "__main__":
    main()
