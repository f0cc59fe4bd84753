from dsrnet.cli import main

raise SystemExit(main())
