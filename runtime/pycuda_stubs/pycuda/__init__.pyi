# pycuda's package: maskrt imports only pycuda.driver.
