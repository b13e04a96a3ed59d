"""`python -m cccatalog` runs the same CLI as the console script."""

from cccatalog.cli import main

if __name__ == "__main__":
    main()
