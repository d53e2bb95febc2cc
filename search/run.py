"""`python -m search.run`: the documented entry point torchrun starts; the search lives in `search.dnas.run`."""

from search.dnas.run import main

if __name__ == "__main__":
    main()
