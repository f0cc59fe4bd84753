from dsrnet.cli.main import main

raise SystemExit(main())
