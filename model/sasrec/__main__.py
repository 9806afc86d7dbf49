"""``python -m model.sasrec DATASET --window 7d``: train SASRec, evaluate it, print the table."""

from model.sasrec.evaluate import main

main()
