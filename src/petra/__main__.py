from petra.cli import main

raise SystemExit(main())
