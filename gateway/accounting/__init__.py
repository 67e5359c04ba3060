"""Metering: usage, cost, the ledger, budgets and reports."""
