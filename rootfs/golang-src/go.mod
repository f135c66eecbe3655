module tailor.example/hello

go 1.19
