from . import main

if __name__ == "__main__":  # spawned processes (the quickstart's second process) import this module too
    main()
