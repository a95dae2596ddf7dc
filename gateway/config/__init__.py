"""The command line and the configuration it builds: read by the master before anything starts.

``settings`` declares every option once (on its Config field), ``declaration`` is how such a declaration is
written and read, ``addresses`` parses listen addresses and allow-lists, ``cli`` is the parser generated from it all.
"""
