// VMControl: see Package.swift for what this layer knows about.
