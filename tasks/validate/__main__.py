"""`python -m tasks.validate`: the validate stage (dvc.yaml)."""

from tasks.validate.stage import main

main()
