"""Helpers the tests share (polling, helper processes); no tests here."""
